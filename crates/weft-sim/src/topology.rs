//! Topologies: random geometric with a target mean degree, grid,
//! Barabási–Albert, or an edge list read from a file. Every generated
//! topology is connected.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Largest edge-list file read, in bytes.
pub const MAX_EDGE_LIST_LEN: usize = 64 * 1024 * 1024;
/// Most nodes an edge list may name.
pub const MAX_NODES: usize = 1_000_000;

/// An undirected graph as an edge list over nodes `0..nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// Node count.
    pub nodes: usize,
    /// Edges, each once, `a < b`.
    pub edges: Vec<(usize, usize)>,
}

impl Graph {
    /// Neighbour lists.
    pub fn adjacency(&self) -> Vec<Vec<usize>> {
        let mut adj = vec![Vec::new(); self.nodes];
        for &(a, b) in &self.edges {
            adj[a].push(b);
            adj[b].push(a);
        }
        adj
    }

    /// Connected component label of every node, considering only nodes
    /// for which `alive` is true (others get `usize::MAX`).
    pub fn components(&self, alive: &[bool]) -> Vec<usize> {
        let adj = self.adjacency();
        let mut label = vec![usize::MAX; self.nodes];
        let mut next = 0;
        for start in 0..self.nodes {
            if !alive[start] || label[start] != usize::MAX {
                continue;
            }
            let mut stack = vec![start];
            label[start] = next;
            while let Some(x) = stack.pop() {
                for &y in &adj[x] {
                    if alive[y] && label[y] == usize::MAX {
                        label[y] = next;
                        stack.push(y);
                    }
                }
            }
            next += 1;
        }
        label
    }

    fn dedup(&mut self) {
        for e in &mut self.edges {
            if e.0 > e.1 {
                *e = (e.1, e.0);
            }
        }
        self.edges.retain(|e| e.0 != e.1);
        self.edges.sort_unstable();
        self.edges.dedup();
    }
}

/// Random geometric graph in the unit square with mean degree ≈ `degree`;
/// components are joined to the largest one by their closest pair.
pub fn geometric(n: usize, degree: f64, rng: &mut ChaCha8Rng) -> Graph {
    let pts: Vec<(f64, f64)> = (0..n).map(|_| (rng.random(), rng.random())).collect();
    let r = (degree / (n.max(1) as f64 * std::f64::consts::PI)).sqrt();
    // Bucket points into cells of side r: neighbours are in adjacent cells.
    let cells = ((1.0 / r).floor() as usize).clamp(1, 4096);
    let cell_of = |p: (f64, f64)| {
        let cx = ((p.0 * cells as f64) as usize).min(cells - 1);
        let cy = ((p.1 * cells as f64) as usize).min(cells - 1);
        (cx, cy)
    };
    let mut grid: Vec<Vec<usize>> = vec![Vec::new(); cells * cells];
    for (i, &p) in pts.iter().enumerate() {
        let (cx, cy) = cell_of(p);
        grid[cy * cells + cx].push(i);
    }
    let mut edges = Vec::new();
    for (i, &p) in pts.iter().enumerate() {
        let (cx, cy) = cell_of(p);
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (x, y) = (cx as i64 + dx, cy as i64 + dy);
                if x < 0 || y < 0 || x >= cells as i64 || y >= cells as i64 {
                    continue;
                }
                for &j in &grid[y as usize * cells + x as usize] {
                    if j > i {
                        let (ddx, ddy) = (pts[j].0 - p.0, pts[j].1 - p.1);
                        if ddx * ddx + ddy * ddy <= r * r {
                            edges.push((i, j));
                        }
                    }
                }
            }
        }
    }
    let mut g = Graph { nodes: n, edges };
    connect_components(&mut g, |a, b| {
        let (dx, dy) = (pts[a].0 - pts[b].0, pts[a].1 - pts[b].1);
        dx * dx + dy * dy
    });
    g.dedup();
    g
}

/// Joins every component to the largest by the closest pair under `dist`.
fn connect_components(g: &mut Graph, dist: impl Fn(usize, usize) -> f64) {
    let alive = vec![true; g.nodes];
    let label = g.components(&alive);
    let count = label
        .iter()
        .copied()
        .filter(|&l| l != usize::MAX)
        .max()
        .map_or(0, |m| m + 1);
    if count <= 1 {
        return;
    }
    let mut sizes = vec![0usize; count];
    for &l in &label {
        sizes[l] += 1;
    }
    let main = (0..count)
        .max_by_key(|&c| (sizes[c], std::cmp::Reverse(c)))
        .unwrap_or(0);
    let members: Vec<usize> = (0..g.nodes).filter(|&i| label[i] == main).collect();
    for c in 0..count {
        if c == main {
            continue;
        }
        let mut best = (f64::INFINITY, 0, 0);
        for a in (0..g.nodes).filter(|&i| label[i] == c) {
            for &b in &members {
                let d = dist(a, b);
                if d < best.0 {
                    best = (d, a, b);
                }
            }
        }
        g.edges.push((best.1, best.2));
    }
}

/// A `side × side` grid (4 neighbours), `side = ceil(sqrt(n))`, truncated to `n` nodes.
pub fn grid(n: usize) -> Graph {
    let side = (n as f64).sqrt().ceil().max(1.0) as usize;
    let mut edges = Vec::new();
    for i in 0..n {
        let (x, y) = (i % side, i / side);
        if x + 1 < side && i + 1 < n {
            edges.push((i, i + 1));
        }
        if y + 1 < side.max(1) && i + side < n {
            edges.push((i, i + side));
        }
    }
    let mut g = Graph { nodes: n, edges };
    g.dedup();
    g
}

/// Barabási–Albert preferential attachment, `m = max(1, degree / 2)` edges per new node.
pub fn barabasi_albert(n: usize, degree: f64, rng: &mut ChaCha8Rng) -> Graph {
    let m = ((degree / 2.0).round() as usize).max(1);
    let mut edges = Vec::new();
    // Every edge end once: sampling from it is sampling by degree.
    let mut ends: Vec<usize> = Vec::new();
    let seed = (m + 1).min(n);
    for a in 0..seed {
        for b in (a + 1)..seed {
            edges.push((a, b));
            ends.push(a);
            ends.push(b);
        }
    }
    for v in seed..n {
        let mut targets: Vec<usize> = Vec::with_capacity(m);
        let mut guard = 0;
        while targets.len() < m.min(v) && guard < 100 * m {
            guard += 1;
            let t = if ends.is_empty() {
                rng.random_range(0..v)
            } else {
                ends[rng.random_range(0..ends.len())]
            };
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        for t in targets {
            edges.push((t, v));
            ends.push(t);
            ends.push(v);
        }
    }
    let mut g = Graph { nodes: n, edges };
    g.dedup();
    g
}

/// Why an edge list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeListError {
    /// The file is too large.
    #[error("edge list is {0} bytes; at most {MAX_EDGE_LIST_LEN} are read")]
    TooLarge(usize),
    /// A line is not `A B` with two node numbers.
    #[error("line {line}: expected two node numbers `A B`, got {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line (truncated).
        text: String,
    },
    /// A node number beyond [`MAX_NODES`].
    #[error("line {line}: node {node} is beyond the limit of {MAX_NODES} nodes")]
    TooManyNodes {
        /// 1-based line number.
        line: usize,
        /// The node number.
        node: usize,
    },
    /// An edge from a node to itself.
    #[error("line {line}: self-loop on node {node}")]
    SelfLoop {
        /// 1-based line number.
        line: usize,
        /// The node.
        node: usize,
    },
    /// No edges at all.
    #[error("edge list has no edges")]
    Empty,
}

/// Parses an edge list: one `A B` per line (whitespace separated, node
/// numbers from 0), blank lines and `#` comments ignored. Node count is
/// the largest number plus one.
pub fn parse_edge_list(text: &[u8]) -> Result<Graph, EdgeListError> {
    if text.len() > MAX_EDGE_LIST_LEN {
        return Err(EdgeListError::TooLarge(text.len()));
    }
    let text = String::from_utf8_lossy(text);
    let mut edges = Vec::new();
    let mut nodes = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let body = raw.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let bad = || EdgeListError::BadLine {
            line,
            text: raw.chars().take(80).collect(),
        };
        let mut parts = body.split_whitespace();
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let a: usize = a.parse().map_err(|_| bad())?;
        let b: usize = b.parse().map_err(|_| bad())?;
        for node in [a, b] {
            if node >= MAX_NODES {
                return Err(EdgeListError::TooManyNodes { line, node });
            }
        }
        if a == b {
            return Err(EdgeListError::SelfLoop { line, node: a });
        }
        nodes = nodes.max(a + 1).max(b + 1);
        edges.push((a, b));
    }
    if edges.is_empty() {
        return Err(EdgeListError::Empty);
    }
    let mut g = Graph { nodes, edges };
    g.dedup();
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn connected(g: &Graph) -> bool {
        let label = g.components(&vec![true; g.nodes]);
        label.iter().all(|&l| l == 0)
    }

    #[test]
    fn generated_topologies_are_connected_with_the_right_degree() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let g = geometric(1000, 8.0, &mut rng);
        assert!(connected(&g));
        let mean = 2.0 * g.edges.len() as f64 / 1000.0;
        assert!((6.0..10.0).contains(&mean), "mean degree {mean}");
        let g = barabasi_albert(500, 8.0, &mut rng);
        assert!(connected(&g));
        let g = grid(100);
        assert!(connected(&g));
        assert_eq!(g.edges.len(), 180);
    }

    #[test]
    fn edge_lists_parse_and_refuse_with_line_numbers() {
        let g = parse_edge_list(b"# ring\n0 1\n1 2\n2 0 # closing\n\n").unwrap();
        assert_eq!(g.nodes, 3);
        assert_eq!(g.edges, vec![(0, 1), (0, 2), (1, 2)]);
        assert_eq!(
            parse_edge_list(b"0 1\n1 x\n"),
            Err(EdgeListError::BadLine {
                line: 2,
                text: "1 x".into()
            })
        );
        assert_eq!(
            parse_edge_list(b"0 1 2\n").unwrap_err().to_string(),
            "line 1: expected two node numbers `A B`, got \"0 1 2\""
        );
        assert_eq!(
            parse_edge_list(b"3 3\n"),
            Err(EdgeListError::SelfLoop { line: 1, node: 3 })
        );
        assert!(matches!(
            parse_edge_list(b"0 99999999\n"),
            Err(EdgeListError::TooManyNodes { .. })
        ));
        assert_eq!(parse_edge_list(b"# nothing\n"), Err(EdgeListError::Empty));
    }
}
