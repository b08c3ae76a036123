//! The head's calibration over gRPC: GetHead and GetGallery report the
//! open-set thresholds for the gallery's current number of subjects, which
//! the test interpolates itself from the returned model; they follow
//! enrolments and removals without retraining, and Identify decides by
//! them; probabilities are the calibrated ones at the prior TrainHead was
//! given, and an out-of-range prior is refused.

use crate::harness::{Server, TempData, assert_status, calibrated_probability, head_logit};
use std::collections::BTreeMap;
use tonic::Code;
use visage_client::proto::{self, OpenSetModel};
use visage_client::{Gallery, TrainHead};
use visage_engine::synth::{SynthConfig, SynthGallery, subject_name};

/// Subjects enrolled when the head is trained.
const TRAINED: usize = 200;
/// Subjects after the later enrolment (between two grid points of the model).
const GROWN: usize = 330;
/// Subjects deleted afterwards.
const REMOVED: usize = 80;

/// The open-set threshold for `n` subjects from the model's points, as the
/// proto documents it: linear in ln N between neighbouring points, the end
/// points beyond them.
fn interpolate(m: &OpenSetModel, n: u64) -> f32 {
    let p = &m.points;
    let (first, last) = (p.first().expect("points"), p.last().expect("points"));
    if n <= first.subjects {
        return first.threshold;
    }
    if n >= last.subjects {
        return last.threshold;
    }
    let i = p
        .iter()
        .position(|q| q.subjects > n)
        .expect("n below the last point");
    let (a, b) = (&p[i - 1], &p[i]);
    let ln = |v: u64| (v as f64).ln();
    let f = (ln(n) - ln(a.subjects)) / (ln(b.subjects) - ln(a.subjects));
    (f64::from(a.threshold) + f * (f64::from(b.threshold) - f64::from(a.threshold))) as f32
}

/// `n` lies strictly between two of the model's grid points (so the
/// interpolation is not just a point read back).
fn between_points(m: &OpenSetModel, n: u64) -> bool {
    m.points
        .windows(2)
        .any(|w| w[0].subjects < n && n < w[1].subjects)
}

fn assert_same_threshold(got: Option<f32>, want: f32, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no threshold reported"));
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{what}: {got} reported, {want} interpolated"
    );
}

/// GetHead's current thresholds are the models' for the current subject
/// count, GetGallery reports the same, and `trusted` is the models' range.
async fn check_current(g: &Gallery, h: &proto::HeadInfo, n: u64) {
    assert_eq!(h.current_subjects, n);
    let head_model = h.open_head_model.as_ref().expect("head's open-set model");
    let dist_model = h
        .open_distance_model
        .as_ref()
        .expect("distance's open-set model");
    assert_same_threshold(
        h.current_open_logit_threshold,
        interpolate(head_model, n),
        &format!("logit threshold for N = {n}"),
    );
    assert_same_threshold(
        h.current_open_distance_threshold,
        interpolate(dist_model, n),
        &format!("distance threshold for N = {n}"),
    );
    let trusted = n <= head_model.trusted_up_to.min(dist_model.trusted_up_to);
    assert_eq!(h.current_open_trusted, trusted, "trusted at N = {n}");
    let info = g.stats().await.unwrap();
    assert_eq!(info.subjects, n);
    assert_eq!(info.open_logit_threshold, h.current_open_logit_threshold);
    assert_eq!(
        info.open_distance_threshold,
        h.current_open_distance_threshold
    );
    assert_eq!(info.open_trusted, h.current_open_trusted);
}

/// Identify's answers for `probes` against the test's own reference: the
/// best candidate's probability is the calibrated one of its logit
/// (computed here from the published weights), and it is known iff that
/// logit reaches the current open-set threshold (away from the threshold,
/// where f32 rounding could decide either way). Returns the known count.
async fn check_identify(
    g: &Gallery,
    h: &proto::HeadInfo,
    probes: &[Vec<f32>],
    vectors: &BTreeMap<u64, Vec<f32>>,
) -> usize {
    let t = f64::from(h.current_open_logit_threshold.expect("logit threshold"));
    let ids = g.identify(probes, 1).await.unwrap();
    let mut known = 0;
    for (probe, r) in probes.iter().zip(&ids) {
        let best = &r.candidates[0];
        let z = head_logit(h, probe, &vectors[&best.id]);
        let p = f64::from(best.probability.expect("a probability"));
        assert!(
            (p - calibrated_probability(h, z)).abs() < 1e-4,
            "probability {p} of logit {z}: {} expected",
            calibrated_probability(h, z)
        );
        if (z - t).abs() > 1e-3 * t.abs().max(1.0) {
            assert_eq!(r.known, z >= t, "logit {z} against {t}");
        }
        known += usize::from(r.known);
    }
    known
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_head_reports_the_thresholds_for_the_current_size() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let synth = SynthGallery::generate(SynthConfig {
        subjects: GROWN,
        min_images: 6,
        max_images: 8,
        seed: 23,
        ..Default::default()
    });
    let wire = |range: std::ops::Range<usize>| -> Vec<visage_client::Embedding> {
        let names: Vec<String> = range.map(subject_name).collect();
        synth
            .embeddings
            .iter()
            .filter(|e| names.contains(&e.subject))
            .map(|e| visage_client::Embedding {
                id: e.id,
                subject: e.subject.clone(),
                vector: e.vector.clone(),
            })
            .collect()
    };
    let vectors: BTreeMap<u64, Vec<f32>> = synth
        .embeddings
        .iter()
        .map(|e| (e.id, e.vector.clone()))
        .collect();
    g.insert(&wire(0..TRAINED)).await.unwrap();
    let opts = |prior: Option<f64>| TrainHead {
        max_pairs: Some(20_000),
        seed: Some(3),
        prior,
        ..TrainHead::default()
    };

    // The prior changes probabilities, never thresholds.
    let even = g.train_head(&opts(None)).await.unwrap();
    let h = g.train_head(&opts(Some(0.25))).await.unwrap();
    assert_eq!((even.prior, h.prior), (0.5, 0.25));
    assert!(h.trained && h.calibration_current && h.probability_calibrated);
    assert_eq!(
        proto::HeadInfo {
            prior: h.prior,
            threshold: h.threshold,
            ..even.clone()
        },
        h,
        "the same seed and data give the same head and thresholds"
    );
    assert!(
        h.threshold < even.threshold,
        "a lower prior, lower probabilities"
    );
    for (head, prior) in [(&even, 0.5f64), (&h, 0.25)] {
        let x = head.platt_a * f64::from(head.logit_threshold)
            + head.platt_b
            + (prior / (1.0 - prior)).ln();
        let want = 1.0 / (1.0 + (-x).exp());
        assert!((f64::from(head.threshold) - want).abs() < 1e-6);
    }
    assert_eq!(
        g.head().await.unwrap(),
        h,
        "GetHead returns what TrainHead did"
    );

    // What the calibration holds: claims per image count, DET curves, and
    // open-set models by size around the training size.
    assert!(h.claim_images > 0 && !h.claim_logit_thresholds.is_empty());
    assert_eq!(
        h.claim_logit_thresholds.len(),
        h.claim_distance_thresholds.len()
    );
    assert!(h.claim_tar > 0.5 && h.claim_tar >= h.claim_tar_other);
    for det in [&h.det_head, &h.det_distance] {
        assert!(det.len() >= 3);
        assert!(det.windows(2).all(|w| w[0].far <= w[1].far));
        assert!(
            det.iter()
                .all(|p| (0.0..=1.0).contains(&p.far) && (0.0..=1.0).contains(&p.frr))
        );
    }
    assert!(h.op_head.is_some() && h.op_distance.is_some());
    let head_model = h.open_head_model.clone().expect("head's model");
    let dist_model = h.open_distance_model.clone().expect("distance's model");
    for (m, higher_is_stricter) in [(&head_model, true), (&dist_model, false)] {
        assert_eq!(m.subjects, TRAINED as u64, "training N");
        assert!(m.points.windows(2).all(|w| w[0].subjects < w[1].subjects));
        // A larger gallery needs a stricter threshold; a fixed one lets
        // more strangers through.
        assert!(m.points.windows(2).all(|w| if higher_is_stricter {
            w[0].threshold <= w[1].threshold
        } else {
            w[0].threshold >= w[1].threshold
        }));
        assert!(
            m.points
                .windows(2)
                .all(|w| w[0].fpir_fixed <= w[1].fpir_fixed)
        );
        for n in [TRAINED, GROWN, GROWN - REMOVED] {
            assert!(between_points(m, n as u64) || n == TRAINED, "{n}");
        }
    }
    // The fixed fields are the models' thresholds at the training size.
    assert_same_threshold(
        Some(h.open_logit_threshold),
        interpolate(&head_model, TRAINED as u64),
        "open_logit_threshold",
    );
    assert_same_threshold(
        Some(h.open_distance_threshold),
        interpolate(&dist_model, TRAINED as u64),
        "open_distance_threshold",
    );
    check_current(&g, &h, TRAINED as u64).await;

    // Probes: new images of all GROWN subjects (those beyond TRAINED are
    // strangers for now) and people never enrolled.
    let probes: Vec<Vec<f32>> = synth
        .probes(60, 30, 9)
        .into_iter()
        .map(|p| p.vector)
        .collect();
    let known_small = check_identify(&g, &h, &probes, &vectors).await;

    // More people enrolled, no retraining: N grows, and so does the
    // threshold in use, exactly as the model says.
    g.insert(&wire(TRAINED..GROWN)).await.unwrap();
    let grown = g.head().await.unwrap();
    check_current(&g, &grown, GROWN as u64).await;
    assert!(grown.current_open_logit_threshold > h.current_open_logit_threshold);
    assert!(grown.current_open_distance_threshold < h.current_open_distance_threshold);
    assert_eq!(
        proto::HeadInfo {
            current_subjects: h.current_subjects,
            current_open_logit_threshold: h.current_open_logit_threshold,
            current_open_distance_threshold: h.current_open_distance_threshold,
            current_open_trusted: h.current_open_trusted,
            ..grown.clone()
        },
        h,
        "nothing but the current thresholds changed"
    );
    let known_grown = check_identify(&g, &grown, &probes, &vectors).await;
    assert!(
        known_grown > known_small,
        "the newly enrolled are known now ({known_small} then {known_grown})"
    );

    // People removed: N shrinks and the threshold with it.
    let gone: Vec<String> = (100..100 + REMOVED).map(subject_name).collect();
    g.delete(&[], &gone).await.unwrap();
    let shrunk = g.head().await.unwrap();
    check_current(&g, &shrunk, (GROWN - REMOVED) as u64).await;
    assert!(shrunk.current_open_logit_threshold < grown.current_open_logit_threshold);
    check_identify(&g, &shrunk, &probes, &vectors).await;

    // A prior outside (0, 1) is refused, naming it, and changes nothing.
    for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert_status(
            g.train_head(&opts(Some(bad))).await,
            Code::InvalidArgument,
            &["prior"],
        );
    }
    assert_eq!(g.head().await.unwrap(), shrunk);
}
