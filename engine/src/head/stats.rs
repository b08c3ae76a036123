//! Statistics of a score on labelled pairs ("higher means same"): the area
//! under the ROC curve and the equal error rate. Scores are ranked by total
//! order, so NaNs (from overflowing values) are ranked too, never looped on.

/// Probability that a random genuine score exceeds a random impostor score (ties count half).
pub fn auc(genuine: &[f64], impostor: &[f64]) -> f64 {
    if genuine.is_empty() || impostor.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = genuine
        .iter()
        .map(|&s| (s, true))
        .chain(impostor.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < all.len() {
        // Ties by total order, so a NaN score (from overflowing values) is one
        // tie group like any other: with `==` it equals nothing, not even itself,
        // and the loop would never advance.
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // ranks i+1 ..= j
        rank_sum += avg_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (ng, ni) = (genuine.len() as f64, impostor.len() as f64);
    (rank_sum - ng * (ng + 1.0) / 2.0) / (ng * ni)
}

/// Equal error rate: where the false-accept and false-reject rates cross.
pub fn eer(genuine: &[f64], impostor: &[f64]) -> f64 {
    if genuine.is_empty() || impostor.is_empty() {
        return f64::NAN;
    }
    let mut g = genuine.to_vec();
    let mut im = impostor.to_vec();
    g.sort_by(|a, b| a.total_cmp(b));
    im.sort_by(|a, b| a.total_cmp(b));
    let mut thresholds: Vec<f64> = g.iter().chain(&im).copied().collect();
    thresholds.sort_by(|a, b| a.total_cmp(b));
    thresholds.dedup();
    let mut best = (f64::INFINITY, 0.5);
    for t in thresholds {
        let frr = g.partition_point(|&s| s < t) as f64 / g.len() as f64;
        let far = (im.len() - im.partition_point(|&s| s < t)) as f64 / im.len() as f64;
        let gap = (far - frr).abs();
        if gap < best.0 {
            best = (gap, (far + frr) / 2.0);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_eer_on_known_cases() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auc(&[1.0], &[1.0]), 0.5);
        assert!((auc(&[1.0, 3.0], &[2.0, 0.0]) - 0.75).abs() < 1e-12);
        assert_eq!(eer(&[3.0, 4.0], &[1.0, 2.0]), 0.0);
    }

    /// Found by the `segment` fuzz target: a NaN score made `auc` loop forever.
    #[test]
    fn auc_terminates_on_nan_scores() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(auc(&[f64::NAN, 2.0, f64::NAN], &[1.0, f64::NAN]));
        });
        let a = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("auc did not finish on NaN scores");
        // Ranked by total order, NaN above everything: the two genuine NaNs and the
        // impostor NaN tie at the top, the genuine 2.0 beats the impostor 1.0.
        assert!((a - (0.5 * 2.0 + 1.0 + 2.0) / 6.0).abs() < 1e-12, "{a}");
    }
}
