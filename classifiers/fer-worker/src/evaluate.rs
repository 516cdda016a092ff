//! Accuracy figures of a classifier on labelled data: a confusion matrix and what it says.

/// Counts of (true class, predicted class).
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    /// Class names.
    pub classes: Vec<String>,
    /// `counts[truth][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// Empty, over `classes`.
    pub fn new(classes: &[&str]) -> Self {
        Confusion {
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
            counts: vec![vec![0; classes.len()]; classes.len()],
        }
    }

    /// One example.
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }

    /// Examples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Share of examples predicted right.
    pub fn accuracy(&self) -> f64 {
        let right: u64 = (0..self.classes.len()).map(|i| self.counts[i][i]).sum();
        right as f64 / self.total().max(1) as f64
    }

    /// Recall of each class (NaN for a class without examples).
    pub fn recalls(&self) -> Vec<f64> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: u64 = row.iter().sum();
                if n == 0 {
                    f64::NAN
                } else {
                    row[i] as f64 / n as f64
                }
            })
            .collect()
    }

    /// Mean recall over the classes that have examples.
    pub fn balanced_accuracy(&self) -> f64 {
        let r: Vec<f64> = self.recalls().into_iter().filter(|v| !v.is_nan()).collect();
        r.iter().sum::<f64>() / r.len().max(1) as f64
    }
}

/// The index of the highest score among `allowed` indices.
pub fn argmax_among(scores: &[f32], allowed: &[usize]) -> usize {
    let mut best = allowed[0];
    for &i in allowed {
        if scores[i] > scores[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_balanced_accuracy() {
        let mut c = Confusion::new(&["a", "b"]);
        for _ in 0..9 {
            c.add(0, 0);
        }
        c.add(1, 0);
        assert_eq!(c.total(), 10);
        assert!((c.accuracy() - 0.9).abs() < 1e-12);
        assert!((c.balanced_accuracy() - 0.5).abs() < 1e-12);
        assert_eq!(argmax_among(&[0.1, 0.9, 0.5], &[0, 2]), 2);
    }
}
