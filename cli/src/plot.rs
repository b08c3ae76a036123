//! Calibration charts as one SVG file with two panels side by side: DET
//! curves of the learned head and of plain distance on held-out pairs, and
//! the false-positive identification rate against the number of enrolled
//! subjects.
//!
//! Text: plotters is built without any font feature, so it lays labels out
//! with its own estimate of text width (no font file, no system font
//! library) and the SVG backend writes each label as a `<text>` element
//! whose glyphs the viewer draws. A viewer whose font is much wider than the
//! estimate may crowd a label against its neighbour; nothing is lost.
//!
//! Both panels are log-log. A point with a NaN or infinite coordinate is
//! dropped. A rate is clamped into its axis: a rate of 0 (no false accepts
//! at the strictest thresholds) sits on the axis minimum instead of
//! vanishing from a log axis, so a curve keeps its ends; a rate above 1
//! sits on 1. An N below 1 (no subject) has no place on a log axis and is
//! dropped; an N above 10^12 (more subjects than people) sits on 10^12.

use crate::{Failure, Res};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use visage_client::HeadInfo;
use visage_client::proto::DetPoint;

/// What `render` draws.
pub struct PlotData {
    /// Title prefix, e.g. the gallery name.
    pub title: String,
    /// DET points (far, frr) of the head on held-out pairs, far ascending; empty if no head.
    pub det_head: Vec<(f64, f64)>,
    /// The same for plain squared distance.
    pub det_distance: Vec<(f64, f64)>,
    /// Operating points (far, frr) at the calibrated thresholds.
    pub op_head: Option<(f64, f64)>,
    pub op_distance: Option<(f64, f64)>,
    /// The target false-accept / false-positive identification rate.
    pub target: f64,
    /// FPIR-vs-N curves: (label, points (n, fpir) with n ascending).
    pub fpir_curves: Vec<(String, Vec<(f64, f64)>)>,
    /// Subjects enrolled when the thresholds were calibrated, and the largest N the model is trusted for (optional markers).
    pub training_n: Option<f64>,
    pub trusted_up_to: Option<f64>,
}

/// What `render` draws for a head's calibration (the wire message; `visage
/// demo` converts the engine's head to it as the server does). Fails when the
/// head has none of the calibration drawn here.
pub fn calibration(gallery: &str, h: &HeadInfo) -> Res<PlotData> {
    if !h.calibration_current {
        let why = if h.trained || h.distance_threshold != 0.0 {
            "its head was calibrated by an older version, without DET curves or an open-set model (retrain it"
        } else {
            "it has no head and no calibration (train one"
        };
        return Err(Failure(format!(
            "gallery {gallery} has nothing to plot: {why} with: visage train-head {gallery})"
        )));
    }
    let det = |d: &[DetPoint]| -> Vec<(f64, f64)> {
        d.iter()
            .map(|p| (f64::from(p.far), f64::from(p.frr)))
            .collect()
    };
    let op = |p: &Option<DetPoint>| p.as_ref().map(|p| (f64::from(p.far), f64::from(p.frr)));
    let target = f64::from(h.target_far);
    // The model identification uses: the head's with one, else distance's.
    let model = match (&h.open_head_model, &h.open_distance_model) {
        (Some(m), _) => Some(("head", m)),
        (None, Some(m)) => Some(("distance", m)),
        (None, None) => None,
    };
    let fpir_curves = model.map_or_else(Vec::new, |(score, m)| {
        vec![
            (
                format!("{score}: threshold fixed at training N (predicted)"),
                m.points
                    .iter()
                    .map(|p| (p.subjects as f64, f64::from(p.fpir_fixed)))
                    .collect(),
            ),
            // What the model holds by construction where its scores back it:
            // the threshold for each N is solved for the target.
            (
                format!("{score}: threshold derived for each N (target by construction)"),
                m.points
                    .iter()
                    .filter(|p| p.subjects <= m.trusted_up_to)
                    .map(|p| (p.subjects as f64, target))
                    .collect(),
            ),
        ]
    });
    Ok(PlotData {
        title: gallery.to_owned(),
        det_head: det(&h.det_head),
        det_distance: det(&h.det_distance),
        op_head: op(&h.op_head),
        op_distance: op(&h.op_distance),
        target,
        fpir_curves,
        training_n: model.map(|(_, m)| m.subjects as f64),
        trusted_up_to: model.map(|(_, m)| m.trusted_up_to as f64),
    })
}

/// Size of the whole picture in pixels; each panel takes half the width.
const SIZE: (u32, u32) = (1200, 520);
/// The lowest rate an axis goes down to, however small the data's rates.
const RATE_FLOOR: f64 = 1e-8;
/// The lowest rate of an axis with no positive rate to show.
const RATE_DEFAULT_LOW: f64 = 1e-4;
/// The highest N an axis goes up to: more subjects than people. (An axis
/// of hundreds of decades also sends plotters' tick placement into a loop
/// that does not end.)
const COUNT_CEILING: f64 = 1e12;
/// The N axis when there is no N to show.
const COUNT_DEFAULT: Range<f64> = 1.0..1e6;

const HEAD: RGBColor = RGBColor(0x1F, 0x77, 0xB4);
const DISTANCE: RGBColor = RGBColor(0xD6, 0x27, 0x28);
/// Colours of the FPIR curves, in turn.
const FPIR_COLOURS: [RGBColor; 5] = [
    RGBColor(0x1F, 0x77, 0xB4),
    RGBColor(0xD6, 0x27, 0x28),
    RGBColor(0x2C, 0xA0, 0x2C),
    RGBColor(0x94, 0x67, 0xBD),
    RGBColor(0xFF, 0x7F, 0x0E),
];
const TARGET: RGBColor = RGBColor(0x55, 0x55, 0x55);
const TRAINING_N: RGBColor = RGBColor(0x00, 0x00, 0x00);
const TRUSTED_UP_TO: RGBColor = RGBColor(0x8C, 0x56, 0x4B);

type DrawResult<T = ()> = Result<T, Box<dyn std::error::Error>>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;

/// Write the SVG to `path`; errors name the path.
pub fn render(data: &PlotData, path: &Path) -> Res {
    let mut svg = String::new();
    draw(data, &mut svg)
        .map_err(|e| Failure(format!("{}: cannot draw the plot: {e}", path.display())))?;
    std::fs::write(path, svg)
        .map_err(|e| Failure(format!("{}: cannot write the plot: {e}", path.display())))?;
    Ok(())
}

fn draw(data: &PlotData, svg: &mut String) -> DrawResult {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    det_panel(&left, data)?;
    fpir_panel(&right, data)?;
    root.present()?;
    Ok(())
}

fn det_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, data: &PlotData) -> DrawResult {
    let ops = data.op_head.iter().chain(&data.op_distance);
    let rates = data.det_head.iter().chain(&data.det_distance).chain(ops);
    let axis = rate_axis(
        rates
            .flat_map(|&(far, frr)| [far, frr])
            .chain([data.target]),
    );
    let mut chart = panel(area, &data.title, "DET on held-out pairs", &axis, &axis)?;
    chart
        .configure_mesh()
        .x_desc("false-accept rate")
        .y_desc("false-reject rate")
        .x_label_formatter(&|v| rate_label(*v))
        .y_label_formatter(&|v| rate_label(*v))
        .draw()?;

    let place = |p: &(f64, f64)| Some((clamp_rate(p.0, &axis)?, clamp_rate(p.1, &axis)?));
    let mut legend = false;
    legend |= curve(&mut chart, &data.det_head, place, "head", HEAD)?;
    legend |= curve(&mut chart, &data.det_distance, place, "distance", DISTANCE)?;
    for (op, label, colour) in [
        (data.op_head, "head at threshold", HEAD),
        (data.op_distance, "distance at threshold", DISTANCE),
    ] {
        if let Some(p) = op.as_ref().and_then(place) {
            chart
                .draw_series(std::iter::once(TriangleMarker::new(p, 7, colour.filled())))?
                .label(label)
                .legend(move |c| TriangleMarker::new(c, 6, colour.filled()));
            legend = true;
        }
    }
    if let Some(x) = target(data.target, &axis) {
        let line = [(x, axis.start), (x, axis.end)];
        legend |= rule(&mut chart, line, "target false-accept rate", TARGET, true)?;
    }
    if legend {
        legend_box(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

fn fpir_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, data: &PlotData) -> DrawResult {
    let points = || data.fpir_curves.iter().flat_map(|(_, ps)| ps);
    let markers = data.training_n.iter().chain(&data.trusted_up_to);
    let x_axis = count_axis(points().map(|p| p.0).chain(markers.copied()));
    let y_axis = rate_axis(points().map(|p| p.1).chain([data.target]));
    let mut chart = panel(
        area,
        &data.title,
        "FPIR vs enrolled subjects",
        &x_axis,
        &y_axis,
    )?;
    chart
        .configure_mesh()
        .x_desc("enrolled subjects N")
        .y_desc("false-positive identification rate")
        .x_label_formatter(&|v| count_label(*v))
        .y_label_formatter(&|v| rate_label(*v))
        .draw()?;

    let place = |p: &(f64, f64)| Some((clamp_count(p.0, &x_axis)?, clamp_rate(p.1, &y_axis)?));
    let mut legend = false;
    for (i, (label, points)) in data.fpir_curves.iter().enumerate() {
        let colour = FPIR_COLOURS[i % FPIR_COLOURS.len()];
        legend |= curve(&mut chart, points, place, label, colour)?;
    }
    if let Some(y) = target(data.target, &y_axis) {
        let line = [(x_axis.start, y), (x_axis.end, y)];
        legend |= rule(&mut chart, line, "target", TARGET, true)?;
    }
    for (n, label, colour, dashed) in [
        (data.training_n, "training N", TRAINING_N, false),
        (data.trusted_up_to, "trusted up to", TRUSTED_UP_TO, true),
    ] {
        if let Some(x) = n.and_then(|n| clamp_count(n, &x_axis)) {
            let line = [(x, y_axis.start), (x, y_axis.end)];
            legend |= rule(&mut chart, line, label, colour, dashed)?;
        }
    }
    if legend {
        legend_box(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(())
}

/// A log-log chart on `area` titled `title: what` (or `what` alone).
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    what: &str,
    x: &Range<f64>,
    y: &Range<f64>,
) -> DrawResult<Chart<'a, 'b>> {
    let caption = if title.is_empty() {
        what.to_owned()
    } else {
        format!("{title}: {what}")
    };
    let chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x.clone().log_scale(), y.clone().log_scale())?;
    Ok(chart)
}

/// Draws the points `place` keeps as a labelled line; a single point is
/// drawn as a dot. Returns whether anything was drawn.
fn curve(
    chart: &mut Chart<'_, '_>,
    points: &[(f64, f64)],
    place: impl Fn(&(f64, f64)) -> Option<(f64, f64)>,
    label: &str,
    colour: RGBColor,
) -> DrawResult<bool> {
    let points: Vec<_> = points.iter().filter_map(place).collect();
    if points.is_empty() {
        return Ok(false);
    }
    let anno = if let [p] = points[..] {
        chart.draw_series(std::iter::once(Circle::new(p, 4, colour.filled())))?
    } else {
        chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?
    };
    anno.label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    Ok(true)
}

/// A labelled straight marker line from `line[0]` to `line[1]`.
fn rule(
    chart: &mut Chart<'_, '_>,
    line: [(f64, f64); 2],
    label: &str,
    colour: RGBColor,
    dashed: bool,
) -> DrawResult<bool> {
    let style = colour.stroke_width(1);
    let anno = if dashed {
        chart.draw_series(DashedLineSeries::new(line, 6, 4, style))?
    } else {
        chart.draw_series(LineSeries::new(line, style))?
    };
    anno.label(label).legend(move |(x, y)| {
        let dash = if dashed { 12 } else { 20 };
        PathElement::new([(x, y), (x + dash, y)], style)
    });
    Ok(true)
}

fn legend_box<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The log axis of rates: from the decade at or below the smallest positive
/// rate (but not below `RATE_FLOOR`) up to 1, and at least two decades
/// (with fewer, plotters crowds the axis with ticks between decades).
fn rate_axis(values: impl Iterator<Item = f64>) -> Range<f64> {
    let smallest = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let low = if smallest.is_finite() {
        10f64.powf(smallest.log10().floor())
    } else {
        RATE_DEFAULT_LOW
    };
    widen(low.clamp(RATE_FLOOR, 0.01)..1.0)
}

/// The log axis of N: whole decades around every N of at least 1 (but not
/// above `COUNT_CEILING`), at least two of them.
fn count_axis(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (low, high) = values
        .filter(|v| v.is_finite() && *v >= 1.0)
        .map(|v| v.min(COUNT_CEILING))
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !low.is_finite() {
        return COUNT_DEFAULT;
    }
    let low = 10f64.powf(low.log10().floor());
    let high = 10f64.powf(high.log10().ceil());
    widen(low..high.max(low * 100.0))
}

/// Widens a range of whole decades by a hair: plotters places a log axis's
/// first tick at the decade at or above the low end, and `10^-6` computed
/// in floating point may land a hair above that decade, losing its label.
fn widen(decades: Range<f64>) -> Range<f64> {
    decades.start * (1.0 - 1e-9)..decades.end * (1.0 + 1e-9)
}

fn clamp_rate(v: f64, axis: &Range<f64>) -> Option<f64> {
    v.is_finite().then(|| v.clamp(axis.start, axis.end))
}

/// A target of 0 or less is no target: there is no line to draw for it.
fn target(v: f64, axis: &Range<f64>) -> Option<f64> {
    if v > 0.0 { clamp_rate(v, axis) } else { None }
}

fn clamp_count(v: f64, axis: &Range<f64>) -> Option<f64> {
    (v.is_finite() && v >= 1.0).then(|| v.clamp(axis.start, axis.end))
}

/// `1e-4`, …, `1`.
fn rate_label(v: f64) -> String {
    if v >= 1.0 {
        "1".into()
    } else {
        format!("{v:.0e}")
    }
}

/// `1`, `10`, …, `1000`, then `1e4`, ….
fn count_label(v: f64) -> String {
    if v < 1e4 {
        format!("{v:.0}")
    } else {
        format!("{v:.0e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roxmltree::{Document, Node};

    /// SplitMix64 and Box-Muller: normal samples without a dependency.
    struct Normal(u64);

    impl Normal {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // 53 random bits in (0, 1].
            ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
        }

        fn sample(&mut self, mean: f64, sd: f64) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            mean + sd * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    const STEPS: usize = 200;
    const TARGET_RATE: f64 = 1e-3;

    /// An empirical DET of distances (accept when at most the threshold) of
    /// genuine and impostor pairs, at `STEPS` thresholds, FAR ascending, and
    /// its operating point: the loosest threshold whose FAR meets the target.
    fn det(rng: &mut Normal, genuine: (f64, f64), impostor: (f64, f64)) -> DetCurve {
        let gen_d: Vec<f64> = (0..2_000)
            .map(|_| rng.sample(genuine.0, genuine.1))
            .collect();
        let imp_d: Vec<f64> = (0..20_000)
            .map(|_| rng.sample(impostor.0, impostor.1))
            .collect();
        let rate = |n: usize, of: &[f64]| n as f64 / of.len() as f64;
        let points: Vec<(f64, f64)> = (0..STEPS)
            .map(|i| {
                let t = 3.0 * i as f64 / (STEPS - 1) as f64;
                let far = rate(imp_d.iter().filter(|&&d| d <= t).count(), &imp_d);
                let frr = rate(gen_d.iter().filter(|&&d| d > t).count(), &gen_d);
                (far, frr)
            })
            .collect();
        let op = points.iter().rev().find(|p| p.0 <= TARGET_RATE).copied();
        DetCurve { points, op }
    }

    struct DetCurve {
        points: Vec<(f64, f64)>,
        op: Option<(f64, f64)>,
    }

    /// FPIR of an open-set search over `n` subjects when each comparison
    /// false-matches with probability `q`: 1 - (1 - q)^n.
    fn fpir(q: f64, n: f64) -> f64 {
        -(n * (-q).ln_1p()).exp_m1()
    }

    fn realistic() -> PlotData {
        let mut rng = Normal(7);
        let head = det(&mut rng, (0.7, 0.15), (1.5, 0.2));
        let distance = det(&mut rng, (0.75, 0.2), (1.45, 0.22));
        let training_n = 10_000.0;
        let ns: Vec<f64> = (0..=30)
            .map(|i| 10f64.powf(1.0 + 5.0 * f64::from(i) / 30.0))
            .collect();
        // The threshold fixed at training N: per-comparison rate set so that
        // FPIR meets the target at training N, then FPIR grows with N.
        let q_fixed = -((-TARGET_RATE).ln_1p() / training_n).exp_m1();
        // Derived for each N: meets the target up to estimation noise (±15%).
        let mut derived = |n: f64| {
            let q = -((-TARGET_RATE).ln_1p() / n).exp_m1();
            fpir(q * (1.0 + 0.3 * rng.uniform() - 0.15), n)
        };
        let derived: Vec<(f64, f64)> = ns.iter().map(|&n| (n, derived(n))).collect();
        PlotData {
            title: "staff".into(),
            det_head: head.points,
            det_distance: distance.points,
            op_head: head.op,
            op_distance: distance.op,
            target: TARGET_RATE,
            fpir_curves: vec![
                (
                    "threshold fixed at training N".into(),
                    ns.iter().map(|&n| (n, fpir(q_fixed, n))).collect(),
                ),
                ("threshold derived for each N".into(), derived),
            ],
            training_n: Some(training_n),
            trusted_up_to: Some(100_000.0),
        }
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    fn numbers(s: &str) -> Vec<f64> {
        s.split([',', ' '])
            .filter(|t| !t.is_empty())
            .map(|t| t.parse().unwrap())
            .collect()
    }

    fn attr(n: Node<'_, '_>, name: &str) -> f64 {
        n.attribute(name).unwrap().parse().unwrap()
    }

    /// Every polyline: its stroke and its points.
    fn polylines(doc: &Document<'_>) -> Vec<(String, Vec<(f64, f64)>)> {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .map(|n| {
                let xy = numbers(n.attribute("points").unwrap());
                let points = xy.chunks(2).map(|p| (p[0], p[1])).collect();
                (n.attribute("stroke").unwrap().to_owned(), points)
            })
            .collect()
    }

    /// The polylines of `colour` with exactly `len` points: the curves.
    fn curves(doc: &Document<'_>, colour: RGBColor, len: usize) -> Vec<Vec<(f64, f64)>> {
        polylines(doc)
            .into_iter()
            .filter(|(stroke, ps)| *stroke == hex(colour) && ps.len() == len)
            .map(|(_, ps)| ps)
            .collect()
    }

    fn texts(doc: &Document<'_>) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or("").trim().to_owned())
            .collect()
    }

    /// Every coordinate drawn (polyline and polygon points, line ends,
    /// circle centres, text anchors).
    fn coordinates(doc: &Document<'_>) -> Vec<(f64, f64)> {
        let mut all = vec![];
        for n in doc.descendants().filter(Node::is_element) {
            match n.tag_name().name() {
                "polyline" | "polygon" => {
                    let xy = numbers(n.attribute("points").unwrap());
                    all.extend(xy.chunks(2).map(|p| (p[0], p[1])));
                }
                "line" => {
                    all.push((attr(n, "x1"), attr(n, "y1")));
                    all.push((attr(n, "x2"), attr(n, "y2")));
                }
                "circle" => all.push((attr(n, "cx"), attr(n, "cy"))),
                "text" => all.push((attr(n, "x"), attr(n, "y"))),
                _ => {}
            }
        }
        all
    }

    fn render_to_string(data: &PlotData) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.svg");
        render(data, &path).unwrap_or_else(|e| panic!("{}", e.0));
        std::fs::read_to_string(&path).unwrap()
    }

    fn assert_svg_root(doc: &Document<'_>) {
        let root = doc.root_element();
        assert!(root.has_tag_name(("http://www.w3.org/2000/svg", "svg")));
        assert_eq!(root.attribute("width"), Some("1200"));
        assert_eq!(root.attribute("height"), Some("520"));
        assert_eq!(root.attribute("viewBox"), Some("0 0 1200 520"));
    }

    fn assert_in_viewport(doc: &Document<'_>) {
        let all = coordinates(doc);
        assert!(!all.is_empty());
        for (x, y) in all {
            assert!(
                (0.0..=1200.0).contains(&x) && (0.0..=520.0).contains(&y),
                "({x}, {y}) outside"
            );
        }
    }

    #[test]
    fn draws_det_and_fpir_panels() {
        let data = realistic();
        assert!(
            data.det_head.iter().any(|p| p.0 == 0.0),
            "the DET reaches FAR 0"
        );
        let svg = render_to_string(&data);
        let doc = Document::parse(&svg).unwrap();
        assert_svg_root(&doc);
        assert_in_viewport(&doc);

        // One polyline per DET curve, every point kept (FAR 0 is clamped,
        // not dropped), in the left panel; FAR ascending and FRR descending
        // run right and down.
        for colour in [HEAD, DISTANCE] {
            let found = curves(&doc, colour, STEPS);
            assert_eq!(found.len(), 1, "DET curve {}", hex(colour));
            let curve = &found[0];
            assert!(curve.iter().all(|p| p.0 < 600.0));
            assert!(
                curve
                    .windows(2)
                    .all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1)
            );
            // It spans the panel's log axes rather than sitting in a corner.
            assert!(curve.last().unwrap().0 - curve[0].0 > 300.0);
        }
        // One polyline per FPIR curve, in the right panel.
        for (i, (label, points)) in data.fpir_curves.iter().enumerate() {
            let found = curves(&doc, FPIR_COLOURS[i], points.len());
            assert_eq!(found.len(), 1, "FPIR curve {label}");
            assert!(found[0].iter().all(|p| p.0 > 600.0));
        }
        // The FPIR of the fixed threshold grows with N: up the picture.
        let fixed = &curves(&doc, FPIR_COLOURS[0], data.fpir_curves[0].1.len())[0];
        assert!(fixed.last().unwrap().1 < fixed[0].1 - 100.0);

        // The operating points: a triangle of each curve's colour on the
        // chart and another in the legend.
        for colour in [HEAD, DISTANCE] {
            let triangles = doc
                .descendants()
                .filter(|n| n.has_tag_name("polygon") && n.attribute("fill") == Some(&hex(colour)))
                .filter(|n| {
                    n.attribute("points")
                        .is_some_and(|p| p.split(' ').filter(|s| !s.is_empty()).count() == 3)
                })
                .count();
            assert_eq!(triangles, 2, "operating point of {}", hex(colour));
        }

        let labels = texts(&doc);
        for label in [
            "staff: DET on held-out pairs",
            "staff: FPIR vs enrolled subjects",
            "head",
            "distance",
            "head at threshold",
            "distance at threshold",
            "target false-accept rate",
            "threshold fixed at training N",
            "threshold derived for each N",
            "target",
            "training N",
            "trusted up to",
            "false-accept rate",
            "enrolled subjects N",
        ] {
            assert!(
                labels.iter().any(|t| t == label),
                "no text {label:?} in {labels:?}"
            );
        }
        // Decade tick labels.
        for tick in ["1e-6", "1e-3", "1e-1", "1", "10", "1e4", "1e6"] {
            assert!(
                labels.iter().any(|t| t == tick),
                "no tick {tick:?} in {labels:?}"
            );
        }
    }

    #[test]
    fn degenerate_data_gives_a_valid_svg() {
        let nan = f64::NAN;
        let cases = [
            PlotData {
                title: String::new(),
                det_head: vec![],
                det_distance: vec![],
                op_head: None,
                op_distance: None,
                target: nan,
                fpir_curves: vec![],
                training_n: None,
                trusted_up_to: None,
            },
            PlotData {
                title: "a <b> & \"c\"".into(),
                det_head: vec![(0.0, 1.0)],
                det_distance: vec![
                    (nan, 0.5),
                    (0.0, 0.0),
                    (0.05, 0.0),
                    (1.0, 0.0),
                    (f64::INFINITY, 0.1),
                ],
                op_head: Some((nan, 0.2)),
                op_distance: Some((0.0, 0.0)),
                target: 0.0,
                fpir_curves: vec![
                    ("empty".into(), vec![]),
                    ("one".into(), vec![(1000.0, 1.0)]),
                    (
                        "bad n".into(),
                        vec![(0.0, 0.1), (-5.0, 0.1), (nan, 0.1), (10.0, 2.0)],
                    ),
                ],
                training_n: Some(0.0),
                trusted_up_to: Some(f64::INFINITY),
            },
            PlotData {
                title: "all equal".into(),
                det_head: vec![(1.0, 1.0); 3],
                det_distance: vec![(1e-300, 1e-300), (f64::MIN_POSITIVE, 1.0)],
                op_head: Some((1.0, 1.0)),
                op_distance: None,
                target: 1.0,
                fpir_curves: vec![("huge".into(), vec![(f64::MAX, 0.5), (f64::MAX, 0.5)])],
                training_n: Some(1.0),
                trusted_up_to: None,
            },
        ];
        for data in &cases {
            let svg = render_to_string(data);
            let doc = Document::parse(&svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
            assert_svg_root(&doc);
            assert_in_viewport(&doc);
        }

        // Nothing to draw: axes and titles, no curve and no legend.
        let doc_text = render_to_string(&cases[0]);
        let doc = Document::parse(&doc_text).unwrap();
        assert!(
            polylines(&doc).iter().all(|(_, ps)| ps.len() == 2),
            "only axis and grid lines"
        );
        let labels = texts(&doc);
        assert!(labels.iter().any(|t| t == "DET on held-out pairs"));
        assert!(!labels.iter().any(|t| t == "head" || t == "target"));

        // Non-finite points dropped, rates of 0 and 1 kept on the axis
        // edges; a single point is a dot; N below 1 dropped.
        let doc_text = render_to_string(&cases[1]);
        let doc = Document::parse(&doc_text).unwrap();
        assert!(
            texts(&doc)
                .iter()
                .any(|t| t == "a <b> & \"c\": DET on held-out pairs")
        );
        let distance = curves(&doc, DISTANCE, 3);
        assert_eq!(distance.len(), 1);
        let [(x0, y0), (x1, y1), (x2, y2)] = distance[0][..] else {
            unreachable!()
        };
        assert!(x0 < x1 && x2 > x0 + 300.0, "FAR 0 and 1 on the axis ends");
        assert!(y0 == y1 && y1 == y2, "FRR 0 on the axis floor");
        let dots = |colour: RGBColor| {
            doc.descendants()
                .filter(|n| n.has_tag_name("circle") && n.attribute("fill") == Some(&hex(colour)))
                .count()
        };
        assert_eq!(dots(HEAD), 1, "single DET point");
        assert_eq!(dots(FPIR_COLOURS[1]), 1, "single FPIR point");
        assert_eq!(dots(FPIR_COLOURS[2]), 1, "one N of four is valid: a dot");
        let labels = texts(&doc);
        assert!(labels.iter().any(|t| t == "distance at threshold"));
        assert!(
            !labels
                .iter()
                .any(|t| t == "head at threshold" || t == "empty")
        );
        assert!(!labels.iter().any(|t| t.starts_with("target")), "target 0");
        // Markers at N 0 and N infinite are dropped too.
        assert!(
            !labels
                .iter()
                .any(|t| t == "training N" || t == "trusted up to")
        );
    }

    #[test]
    fn axes_cover_the_data_in_whole_decades() {
        let close = |a: Range<f64>, lo: f64, hi: f64| {
            assert!(
                (a.start / lo - 1.0).abs() < 1e-6 && (a.end / hi - 1.0).abs() < 1e-6,
                "{a:?}"
            );
            // The decades themselves are inside, so they get their ticks.
            assert!(a.start <= lo && a.end >= hi, "{a:?}");
        };
        let nan = f64::NAN;
        close(rate_axis([0.0, 3e-5, 0.2, nan].into_iter()), 1e-5, 1.0);
        close(rate_axis([1e-6].into_iter()), 1e-6, 1.0);
        close(rate_axis([0.5, 1.0].into_iter()), 1e-2, 1.0);
        close(rate_axis([1e-300, -1.0].into_iter()), RATE_FLOOR, 1.0);
        close(rate_axis([0.0, nan].into_iter()), RATE_DEFAULT_LOW, 1.0);
        close(count_axis([20.0, 3_000.0, 0.5].into_iter()), 10.0, 1e4);
        close(count_axis([1_000.0].into_iter()), 1_000.0, 1e5);
        close(count_axis([1.0, f64::MAX].into_iter()), 1.0, COUNT_CEILING);
        assert_eq!(count_axis([0.0, -3.0, nan].into_iter()), COUNT_DEFAULT);

        let axis = rate_axis([1e-3].into_iter());
        assert_eq!(clamp_rate(0.0, &axis), Some(axis.start));
        assert_eq!(clamp_rate(2.0, &axis), Some(axis.end));
        assert_eq!(clamp_rate(0.1, &axis), Some(0.1));
        assert_eq!(clamp_rate(nan, &axis), None);
        assert_eq!(target(0.0, &axis), None);
        let axis = count_axis([10.0, 1e6].into_iter());
        assert_eq!(clamp_count(0.5, &axis), None);
        assert_eq!(clamp_count(f64::INFINITY, &axis), None);
        assert_eq!(clamp_count(1e4, &axis), Some(1e4));
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("plot.svg");
        let err = render(&realistic(), &path).expect_err("no such directory");
        assert!(err.0.contains(&path.display().to_string()), "{}", err.0);
    }
}
