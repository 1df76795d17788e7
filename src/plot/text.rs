//! A bitmap backend whose text sits where the font puts it.
//!
//! plotters 0.3.7 draws each glyph of a text from the left edge of its pen position, dropping
//! the glyph's left side bearing, so narrow glyphs ('.', ':', '(') hug the left of their cell
//! and tick labels read "0. 50". This backend draws every shape through `BitMapBackend` and
//! lays text out itself: glyphs positioned at the pen, kerned, rasterised with coverage.
//! Everything else (sizes, anchors, the vertical placement, rotation) follows plotters.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind};

type Error = DrawingErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

pub struct Canvas<'a> {
    bitmap: BitMapBackend<'a>,
    font: FontRef<'static>,
}

impl<'a> Canvas<'a> {
    /// Every text is drawn in `font` (the charts use one font for everything).
    pub fn new(bitmap: BitMapBackend<'a>, font: &'static [u8]) -> Self {
        let font = FontRef::try_from_slice(font).expect("the bundled font is a valid TrueType file");
        Canvas { bitmap, font }
    }

    /// Width of `text` at `size` pixels (advances and kerning) and plotters' line height.
    fn extent(&self, text: &str, size: f64) -> (i32, i32) {
        let font = self.font.as_scaled(PxScale::from(size as f32));
        let mut width = 0.0;
        let mut previous = None;
        for c in text.chars() {
            let glyph = font.glyph_id(c);
            if let Some(p) = previous {
                width += font.kern(p, glyph);
            }
            width += font.h_advance(glyph);
            previous = Some(glyph);
        }
        (width as i32, (size / 1.24) as i32)
    }
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.bitmap.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), Error> {
        self.bitmap.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), Error> {
        self.bitmap.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Error> {
        self.bitmap.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), Error> {
        self.bitmap.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Error> {
        self.bitmap.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), Error> {
        self.bitmap.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(&self, text: &str, style: &T) -> Result<(u32, u32), Error> {
        let (width, height) = self.extent(text, style.size());
        Ok((width as u32, height as u32))
    }

    fn draw_text<T: BackendTextStyle>(&mut self, text: &str, style: &T, pos: BackendCoord) -> Result<(), Error> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let size = style.size();
        let (width, height) = self.extent(text, size);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();
        let font = self.font.as_scaled(PxScale::from(size as f32));
        let mut pen = 0.0;
        let mut previous = None;
        let mut pixels = Vec::new();
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                pen += font.kern(p, id);
            }
            previous = Some(id);
            // Positioned at the pen, so the outline's bounds include the side bearing.
            let glyph = id.with_scale_and_position(font.scale(), point(pen, 0.0));
            pen += font.h_advance(id);
            let Some(outline) = font.outline_glyph(glyph) else { continue };
            let bounds = outline.px_bounds();
            // plotters' vertical placement: the baseline half the size below the anchor, rounded
            // once for the whole text (per glyph, '.' and '-' sat a pixel off the digits).
            let top = (size / 2.0).floor() as i32 + bounds.min.y as i32;
            let left = bounds.min.x as i32;
            outline.draw(|x, y, coverage| pixels.push((left + x as i32, top + y as i32, coverage)));
        }
        for (x, y, coverage) in pixels {
            let (x, y) = transform.transform(x + dx, y + dy);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if x >= 0 && x < w as i32 && y >= 0 && y < h as i32 {
                let ink = BackendColor { alpha: color.alpha * f64::from(coverage), rgb: color.rgb };
                self.bitmap.draw_pixel((x, y), ink)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::FONT;

    const W: u32 = 400;
    const H: u32 = 100;

    /// The (x, y) pixels with ink after drawing `text` black on white at (100, 20).
    fn ink(text: &str, size: f64) -> Vec<(u32, u32)> {
        let mut buffer = vec![255u8; (W * H * 3) as usize];
        {
            let mut canvas = Canvas::new(BitMapBackend::with_buffer(&mut buffer, (W, H)), FONT);
            let style = TextStyle::from(("sans-serif", size).into_font()).color(&BLACK);
            canvas.draw_text(text, &style, (100, 20)).unwrap();
            canvas.present().unwrap();
        }
        let inked = |&(x, y): &(u32, u32)| buffer[((y * W + x) * 3) as usize] < 128;
        (0..W).flat_map(|x| (0..H).map(move |y| (x, y))).filter(inked).collect()
    }

    /// The columns with ink, left to right.
    fn ink_columns(text: &str, size: f64) -> Vec<u32> {
        let mut columns: Vec<u32> = ink(text, size).into_iter().map(|(x, _)| x).collect();
        columns.dedup();
        columns
    }

    #[test]
    fn a_narrow_glyph_sits_in_the_middle_of_its_cell() {
        let size = 40.0;
        let font = FontRef::try_from_slice(FONT).unwrap();
        let advance = font.as_scaled(PxScale::from(size as f32)).h_advance(font.glyph_id('.'));
        // In a monospace font the full stop is centred in its cell; plotters' own renderer put
        // it at the cell's left edge (its ink started at x = 100).
        let dot = ink_columns(".", size);
        let centre = (dot[0] + dot[dot.len() - 1]) as f32 / 2.0;
        assert!((centre - (100.0 + advance / 2.0)).abs() <= 2.0, "dot centred at x = {centre}");
        // The next glyph starts one advance further on, whatever the dot's width.
        let zero = ink_columns("0", size);
        let both = ink_columns(".0", size);
        let shift = both[both.len() - 1] as f32 - zero[zero.len() - 1] as f32;
        assert!((shift - advance).abs() <= 1.0, "'0' moved by {shift}, advance {advance}");
    }

    #[test]
    fn text_size_agrees_with_the_legend_sizing_of_plotters() {
        // plotters sizes a legend box by its own layout (FontDesc::box_size), not the backend's.
        crate::plot::register();
        let buffer = &mut vec![0u8; 3 * 10 * 10];
        let canvas = Canvas::new(BitMapBackend::with_buffer(buffer, (10, 10)), FONT);
        for size in [15.0, 17.0, 22.0] {
            let style = TextStyle::from(("sans-serif", size).into_font());
            for text in ["0.50", "gtn:teacher240 (all)", "-0.10", "W"] {
                let ours = canvas.estimate_text_size(text, &style).unwrap();
                assert_eq!(ours, style.font.box_size(text).unwrap(), "{text:?} at {size}");
            }
        }
    }

    #[test]
    fn glyphs_of_one_text_share_a_baseline() {
        // '0' and '0.0': the digits' lowest ink row must not move with the full stop beside them.
        for size in [15.0, 17.0] {
            let bottom = |text: &str| ink(text, size).into_iter().map(|(_, y)| y).max().unwrap();
            assert_eq!(bottom("0"), bottom("0.0"), "at {size} px");
            assert_eq!(bottom("0"), bottom("."), "at {size} px: the full stop sits on the baseline");
        }
    }
}
