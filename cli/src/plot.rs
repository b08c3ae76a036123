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
