//! How a figure grows with the fleet's size: the least-squares line through its values at each
//! N, read as a slope per node and as the value it projects at a larger fleet.

/// `value = intercept + slope × N`.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    pub intercept: f64,
    pub slope: f64,
}

impl Line {
    pub fn at(&self, n: f64) -> f64 {
        self.intercept + self.slope * n
    }
}

/// The least-squares line through `(N, value)` points; `None` with fewer than two sizes.
pub fn fit(points: &[(f64, f64)]) -> Option<Line> {
    let count = points.len() as f64;
    let mean_n = points.iter().map(|p| p.0).sum::<f64>() / count;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / count;
    let spread: f64 = points.iter().map(|p| (p.0 - mean_n).powi(2)).sum();
    if points.len() < 2 || spread == 0.0 {
        return None;
    }
    let slope = points
        .iter()
        .map(|p| (p.0 - mean_n) * (p.1 - mean_v))
        .sum::<f64>()
        / spread;
    Some(Line {
        intercept: mean_v - slope * mean_n,
        slope,
    })
}
