//! The IDX file format (MNIST, Fashion-MNIST): a 4-byte magic number `0 0 type ndims`, `ndims`
//! big-endian u32 dimensions, then the unsigned bytes. Files may be gzip-compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// Element type code for unsigned bytes, the only one MNIST-style datasets use.
const UBYTE: u8 = 0x08;

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{path}: cannot read")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt or cut-short gzip data ({cause})")]
    Gzip { path: PathBuf, cause: std::io::Error },
    #[error("{path}: not an IDX file: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads the whole file, decompressing it when it starts with the gzip magic bytes.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, IdxError> {
    let io = |source| IdxError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|cause| IdxError::Gzip { path: path.to_path_buf(), cause })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads an IDX file holding `ndims` dimensions, plain or gzip-compressed.
pub fn read(path: &Path, ndims: usize) -> Result<Idx, IdxError> {
    parse(&read_bytes(path)?, ndims).map_err(|reason| IdxError::Format { path: path.to_path_buf(), reason })
}

/// Parses IDX bytes, checking the magic number, the dimension count and the payload length.
pub fn parse(bytes: &[u8], ndims: usize) -> Result<Idx, String> {
    if bytes.len() < 4 {
        return Err(format!("file is {} bytes, shorter than the 4-byte header", bytes.len()));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != UBYTE {
        return Err(format!(
            "magic number {:02x}{:02x}{:02x}{:02x}, expected 000008{ndims:02x} (unsigned bytes, {ndims} dimensions)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[3] as usize != ndims {
        return Err(format!("{} dimensions in the header, expected {ndims}", bytes[3]));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!("file is {} bytes, shorter than its {header}-byte header", bytes.len()));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("header dimensions {dims:?} hold more bytes than this machine can address"))?;
    let payload = bytes.len() - header;
    if payload != expected {
        return Err(format!(
            "header dimensions {dims:?} need {expected} data bytes, file has {payload} (truncated or corrupt)"
        ));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// The header of an unsigned-byte IDX array of shape `dims`.
pub fn header(dims: &[usize]) -> Vec<u8> {
    let mut out = vec![0, 0, UBYTE, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out
}

/// Encodes an unsigned-byte IDX array (used to write test fixtures and in tests).
pub fn encode(idx: &Idx) -> Vec<u8> {
    let mut out = header(&idx.dims);
    out.extend_from_slice(&idx.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Idx {
        Idx { dims: vec![2, 2, 3], data: (0..12).collect() }
    }

    #[test]
    fn round_trip() {
        assert_eq!(parse(&encode(&sample()), 3).unwrap(), sample());
    }

    #[test]
    fn rejects_bad_magic() {
        let mut b = encode(&sample());
        b[2] = 0x0d;
        assert!(parse(&b, 3).unwrap_err().contains("magic number"));
    }

    #[test]
    fn rejects_wrong_ndims() {
        let err = parse(&encode(&sample()), 1).unwrap_err();
        assert!(err.contains("3 dimensions in the header, expected 1"), "{err}");
    }

    #[test]
    fn rejects_truncated_payload() {
        let b = encode(&sample());
        let err = parse(&b[..b.len() - 1], 3).unwrap_err();
        assert!(err.contains("need 12 data bytes, file has 11"), "{err}");
    }

    #[test]
    fn rejects_extra_bytes() {
        let mut b = encode(&sample());
        b.push(0);
        assert!(parse(&b, 3).unwrap_err().contains("file has 13"));
    }

    #[test]
    fn rejects_dimensions_whose_product_overflows() {
        let mut b = vec![0, 0, 8, 3];
        for _ in 0..3 {
            b.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let err = parse(&b, 3).unwrap_err();
        assert!(err.contains("hold more bytes than this machine can address"), "{err}");
    }

    #[test]
    fn rejects_short_header() {
        assert!(parse(&[0, 0, 8], 3).unwrap_err().contains("shorter than the 4-byte header"));
        assert!(parse(&[0, 0, 8, 3, 0, 0], 3).unwrap_err().contains("16-byte header"));
    }

    #[test]
    fn reads_gzip_and_plain_files_and_names_the_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a-idx3-ubyte");
        std::fs::write(&plain, encode(&sample())).unwrap();
        let gz = dir.path().join("a-idx3-ubyte.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&encode(&sample())).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read(&plain, 3).unwrap(), sample());
        assert_eq!(read(&gz, 3).unwrap(), sample());

        let missing = dir.path().join("missing");
        let err = anyhow::Error::from(read(&missing, 3).unwrap_err());
        assert_eq!(
            format!("{err:#}"),
            format!("{}: cannot read: No such file or directory (os error 2)", missing.display())
        );
        let bad_gz = dir.path().join("bad.gz");
        std::fs::write(&bad_gz, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(read(&bad_gz, 3).unwrap_err().to_string().starts_with(&bad_gz.display().to_string()));
    }
}
