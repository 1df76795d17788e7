//! The search space: an ENAS/NAO-style micro cell. Five nodes; node `j` reads two of the states
//! before it (0 and 1 are the cell's two inputs, `k + 2` is node `k`), applies one op to each and
//! sums them. The cell's output concatenates the nodes no other node reads.
//!
//! Canonical text: nodes separated by `/`, each node `from:op,from:op` with its two inputs in
//! sorted order (the sum is symmetric, so both orders are one architecture), e.g.
//! `0:sep3,1:id/0:avg3,2:max3/1:sep5,3:id/2:id,4:sep3/0:max3,5:avg3`.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Nodes per cell.
pub const NODES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Identity,
    Sep3,
    Sep5,
    Avg3,
    Max3,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Identity, Op::Sep3, Op::Sep5, Op::Avg3, Op::Max3];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Identity => "id",
            Op::Sep3 => "sep3",
            Op::Sep5 => "sep5",
            Op::Avg3 => "avg3",
            Op::Max3 => "max3",
        }
    }

    /// Kernel size of a separable convolution, `None` for parameter-free ops.
    pub fn sep_kernel(self) -> Option<i64> {
        match self {
            Op::Sep3 => Some(3),
            Op::Sep5 => Some(5),
            _ => None,
        }
    }
}

impl FromStr for Op {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Op> {
        match Op::ALL.into_iter().find(|op| op.as_str() == s) {
            Some(op) => Ok(op),
            None => {
                let names: Vec<&str> = Op::ALL.iter().map(|o| o.as_str()).collect();
                bail!("unknown op `{s}`, expected one of {}", names.join(", "))
            }
        }
    }
}

/// One input of a node: which earlier state it reads and the op applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Input {
    pub from: u8,
    pub op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    pub inputs: [Input; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cell {
    pub nodes: [Node; NODES],
}

impl Cell {
    /// Checks that every node reads only earlier states and puts each node's inputs in
    /// canonical order.
    pub fn new(mut nodes: [Node; NODES]) -> Result<Cell> {
        for (j, node) in nodes.iter_mut().enumerate() {
            for input in node.inputs {
                if input.from as usize >= j + 2 {
                    bail!(
                        "node {j} reads state {}: expected 0..={} (0, 1: cell inputs; k + 2: node k)",
                        input.from,
                        j + 1
                    );
                }
            }
            node.inputs.sort();
        }
        Ok(Cell { nodes })
    }

    /// A random cell: each input's state and op drawn uniformly and independently, as ENAS's
    /// sampler does. Not uniform over canonical encodings: once a node's inputs are sorted, two
    /// different inputs are twice as likely as the same input twice.
    pub fn sample(rng: &mut StdRng) -> Cell {
        let nodes = std::array::from_fn(|j| Node {
            inputs: std::array::from_fn(|_| Input {
                from: rng.gen_range(0..j as u8 + 2),
                op: Op::ALL[rng.gen_range(0..Op::ALL.len())],
            }),
        });
        Cell::new(nodes).expect("sampled inputs are in range")
    }

    /// Whether some node reads `state` (0 and 1: the cell's inputs).
    pub fn reads(&self, state: usize) -> bool {
        self.nodes.iter().any(|n| n.inputs.iter().any(|i| i.from as usize == state))
    }

    /// States (indices as in the encoding) no node reads, in order: the cell's output.
    pub fn unused_nodes(&self) -> Vec<usize> {
        let read: Vec<usize> = self.nodes.iter().flat_map(|n| n.inputs.map(|i| i.from as usize)).collect();
        (2..NODES + 2).filter(|s| !read.contains(s)).collect()
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (j, node) in self.nodes.iter().enumerate() {
            let [a, b] = node.inputs;
            let sep = if j == 0 { "" } else { "/" };
            write!(f, "{sep}{}:{},{}:{}", a.from, a.op.as_str(), b.from, b.op.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for Cell {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Cell> {
        let err = |msg: String| anyhow::anyhow!("architecture `{text}`: {msg}");
        let parts: Vec<&str> = text.trim().split('/').collect();
        if parts.len() != NODES {
            return Err(err(format!("{} nodes separated by `/`, expected {NODES}", parts.len())));
        }
        let mut nodes = Vec::with_capacity(NODES);
        for (j, part) in parts.iter().enumerate() {
            let inputs: Vec<&str> = part.split(',').collect();
            if inputs.len() != 2 {
                return Err(err(format!(
                    "node {j} `{part}` has {} inputs, expected 2 as `from:op,from:op`",
                    inputs.len()
                )));
            }
            let parse_input = |s: &str| -> Result<Input> {
                let (from, op) = s.split_once(':').ok_or_else(|| anyhow::anyhow!("`{s}` is not `from:op`"))?;
                let from = from.parse::<u8>().map_err(|_| anyhow::anyhow!("`{from}` is not a state index"))?;
                Ok(Input { from, op: op.parse()? })
            };
            let a = parse_input(inputs[0]).map_err(|e| err(format!("node {j}: {e}")))?;
            let b = parse_input(inputs[1]).map_err(|e| err(format!("node {j}: {e}")))?;
            nodes.push(Node { inputs: [a, b] });
        }
        let nodes: [Node; NODES] = nodes.try_into().expect("length checked");
        Cell::new(nodes).map_err(|e| err(e.to_string()))
    }
}

/// The most architectures `sample_distinct` is asked for: far more than a search can score, and
/// far fewer than the space holds (about 2e11 cells), so drawing them ends.
pub const MAX_SAMPLE: u64 = 1_000_000;

/// `n` distinct random cells from `seed`, in the order drawn (architecture `k` of a list is the
/// same whatever `n` is, so lists of different lengths share a prefix).
pub fn sample_distinct(n: usize, seed: u64) -> Vec<Cell> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<Cell> = Vec::new();
    while out.len() < n {
        let cell = Cell::sample(&mut rng);
        if seen.insert(cell) {
            out.push(cell);
        }
    }
    out
}

/// Reads one architecture per line; blank lines and `#` comments are skipped.
pub fn parse_list(text: &str, source: &str) -> Result<Vec<Cell>> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| l.parse().map_err(|e: anyhow::Error| anyhow::anyhow!("{source}:{}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_is_canonical() {
        let text = "0:sep3,1:id/0:avg3,2:max3/1:sep5,3:id/2:id,4:sep3/0:max3,5:avg3";
        let cell: Cell = text.parse().unwrap();
        assert_eq!(cell.to_string(), text);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let c = Cell::sample(&mut rng);
            assert_eq!(c.to_string().parse::<Cell>().unwrap(), c);
        }
        // Swapped inputs are the same architecture and print the same.
        let swapped: Cell = "1:id,0:sep3/2:max3,0:avg3/3:id,1:sep5/4:sep3,2:id/5:avg3,0:max3".parse().unwrap();
        assert_eq!(swapped, cell);
        assert_eq!(swapped.to_string(), text);
        assert_eq!(cell.unused_nodes(), vec![6]);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            ("0:id,1:id", "1 nodes separated by `/`, expected 5"),
            ("0:id/0:id,1:id/0:id,1:id/0:id,1:id/0:id,1:id", "node 0 `0:id` has 1 inputs"),
            ("0:id,1:conv7/0:id,1:id/0:id,1:id/0:id,1:id/0:id,1:id", "unknown op `conv7`"),
            ("0:id,2:id/0:id,1:id/0:id,1:id/0:id,1:id/0:id,1:id", "node 0 reads state 2: expected 0..=1"),
            ("0:id,x:id/0:id,1:id/0:id,1:id/0:id,1:id/0:id,1:id", "`x` is not a state index"),
            ("0:id,1id/0:id,1:id/0:id,1:id/0:id,1:id/0:id,1:id", "`1id` is not `from:op`"),
        ];
        for (text, want) in cases {
            let err = text.parse::<Cell>().unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(text), "{text}: {err}");
        }
        let err = parse_list("# header\n\n0:id,1:id\n", "archs.txt").unwrap_err().to_string();
        assert!(err.starts_with("archs.txt:3: "), "{err}");
    }

    #[test]
    fn sampler_is_deterministic_distinct_and_covers_the_space() {
        let a = sample_distinct(50, 7);
        assert_eq!(a, sample_distinct(50, 7));
        assert_eq!(&sample_distinct(20, 7)[..], &a[..20]);
        assert_ne!(a, sample_distinct(50, 8));
        for (i, c) in a.iter().enumerate() {
            assert!(!a[..i].contains(c), "duplicate architecture {c}");
        }
        for op in Op::ALL {
            assert!(a.iter().any(|c| c.nodes.iter().any(|n| n.inputs.iter().any(|i| i.op == op))), "{op:?}");
        }
        assert!(a.iter().any(|c| c.unused_nodes().len() > 1));
        let text: String = a.iter().map(|c| format!("{c}\n")).collect();
        assert_eq!(parse_list(&text, "x").unwrap(), a);
    }
}
