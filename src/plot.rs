//! Line charts as PNG files: a mean line per series with a shaded band for its spread.

mod text;

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, BoldPoints, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Bundled so that charts render the same on machines without system fonts (DejaVu licence in
/// `assets/fonts`).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";
/// Most labelled ticks on the y axis (plotters' own default, set so the label format can
/// ask plotters which ticks it will draw).
const Y_LABELS: usize = 11;

/// matplotlib's "tab10", the colours this field's readers know.
pub(crate) const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a chart: points `(x, mean, spread)`; the band covers mean ± spread.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend entry; none when empty (a series the chart's labels explain by its style).
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
    /// Index into the chart's colours (cycled); series that belong together share one.
    pub color: usize,
    /// Dashed instead of solid, to tell apart series that share a colour.
    pub dashed: bool,
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// Adds a second panel below the whole chart with the y axis from this value up, where
    /// curves that all end near the top can be told apart.
    pub zoom_from: Option<f64>,
    /// A logarithmic x axis (base 2), for step counts that double; every x must be positive.
    pub log_x: bool,
}

const WIDTH: u32 = 960;
const HEIGHT: u32 = 640;
/// Height of the zoomed panel, when there is one.
const ZOOM_HEIGHT: u32 = 480;

pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            panic!("the bundled font is a valid TrueType file");
        }
    });
}

impl Chart<'_> {
    /// Renders the chart and writes it to `output` atomically.
    pub fn write_png(&self, output: &Path) -> Result<()> {
        register();
        let points = self.series.iter().flat_map(|s| &s.points);
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, m, s) in points {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(m - s), y1.max(m + s));
        }
        if !(x0.is_finite() && y0.is_finite()) {
            bail!("{}: nothing to plot", output.display());
        }
        if self.log_x && x0 <= 0.0 {
            bail!("{}: a logarithmic x axis needs positive x, got {x0}", output.display());
        }
        let x = x_axis(x0, x1, self.log_x);
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        // A zoom that would show everything, or nothing, is no zoom.
        let zoom_from = self.zoom_from.filter(|&z| z > y0 - pad && z < y1);
        let height = HEIGHT + zoom_from.map_or(0, |_| ZOOM_HEIGHT);
        let mut buffer = vec![0u8; (WIDTH * height * 3) as usize];
        {
            let bitmap = BitMapBackend::with_buffer(&mut buffer, (WIDTH, height));
            let root = text::Canvas::new(bitmap, FONT).into_drawing_area();
            let draw_err = |e: DrawingAreaErrorKind<_>| anyhow!("{}: cannot draw: {e:?}", output.display());
            root.fill(&WHITE).map_err(draw_err)?;
            let (whole, zoomed) = root.split_vertically(HEIGHT);
            let full = (y0 - pad)..(y1 + pad);
            // The legend goes on the last panel, in the corner where it hides the least.
            let mut panels = vec![(&whole, self.title, full.clone(), self.y_label.to_owned(), None)];
            match zoom_from {
                Some(z) => {
                    let zoom = z..(y1 + (y1 - z) * 0.05);
                    let corner = self.legend_corner(&x, &zoom, ZOOM_HEIGHT);
                    panels.push((&zoomed, "", zoom, format!("{}, zoomed", self.y_label), Some(corner)));
                }
                None => panels[0].4 = Some(self.legend_corner(&x, &full, HEIGHT)),
            }
            for (area, caption, y, y_label, legend) in panels {
                if self.log_x {
                    let x = x.clone().log_scale().base(2.0);
                    self.panel(area, caption, x, y, &y_label, legend).map_err(draw_err)?;
                } else {
                    self.panel(area, caption, x.clone(), y, &y_label, legend).map_err(draw_err)?;
                }
            }
            root.present().map_err(draw_err)?;
        }
        let image = image::RgbImage::from_raw(WIDTH, height, buffer).expect("buffer has the image's size");
        crate::atomic::replace_with(output, |tmp| {
            image
                .save_with_format(tmp, image::ImageFormat::Png)
                .with_context(|| format!("{}: cannot write", output.display()))
        })
    }

    /// Every series, mean line over a shaded spread band, on `area` with the given ranges.
    /// Only `y` may cut data off (a zoom's floor): what lies below it is clipped here.
    fn panel<DB: DrawingBackend, X>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        caption: &str,
        x: X,
        y: std::ops::Range<f64>,
        y_label: &str,
        legend: Option<SeriesLabelPosition>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        X: AsRangedCoord<Value = f64>,
        X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let y_decimals = tick_decimals(&RangedCoordf64::from(y.clone()).key_points(BoldPoints(Y_LABELS)));
        let floor = y.start;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FAMILY, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x, y)?;
        let span = chart.x_range();
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(y_label)
            .x_labels(x_labels(span, self.log_x))
            .y_labels(Y_LABELS)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|&y| tick_label(y, y_decimals))
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .draw()?;
        for series in self.series {
            let color = COLORS[series.color % COLORS.len()].to_rgba();
            let upper = series.points.iter().map(|&(x, m, s)| (x, m + s));
            let lower = series.points.iter().rev().map(|&(x, m, s)| (x, m - s));
            let band = clip_polygon(&upper.chain(lower).collect::<Vec<_>>(), floor);
            chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.15).filled())))?;
            let line: Vec<(f64, f64)> = series.points.iter().map(|&(x, m, _)| (x, m)).collect();
            let pieces = clip_line(&line, floor);
            // A line through one point draws nothing: such a piece is a dot, a ring when dashed.
            let dots: Vec<(f64, f64)> = pieces.iter().filter(|p| p.len() == 1).map(|p| p[0]).collect();
            let stroke = color.stroke_width(2);
            let dot = if series.dashed { stroke } else { color.filled() };
            chart.draw_series(dots.into_iter().map(|p| Circle::new(p, 5, dot)))?;
            let drawn = if series.dashed {
                chart.draw_series(pieces.into_iter().flat_map(|piece| DashedLineSeries::new(piece, 9, 6, stroke)))?
            } else {
                chart.draw_series(pieces.into_iter().map(|piece| PathElement::new(piece, stroke)))?
            };
            if series.name.is_empty() {
                continue;
            }
            let dashed = series.dashed;
            drawn.label(series.name.as_str()).legend(move |(x, y)| {
                // Two strokes with a gap, or one stroke drawn twice: one element type for both.
                let (end, start) = if dashed { (8, 13) } else { (21, 0) };
                let stroke = color.stroke_width(3);
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (end, 0)], stroke)
                    + PathElement::new([(start, 0), (21, 0)], stroke)
            });
        }
        if let Some(corner) = legend {
            chart
                .configure_series_labels()
                .position(corner)
                .label_font((FAMILY, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    }

    /// The corner of a panel of `height` pixels showing `x` by `y` where a legend of this
    /// chart's series would cover the fewest points of their lines (sampled along each segment,
    /// as drawn); lower right when several tie.
    fn legend_corner(&self, x: &Range<f64>, y: &Range<f64>, height: u32) -> SeriesLabelPosition {
        let unit_x = |v: f64| match self.log_x {
            true => (v / x.start).ln() / (x.end / x.start).ln(),
            false => (v - x.start) / (x.end - x.start),
        };
        let unit = |&(px, py, _): &(f64, f64, f64)| (unit_x(px), (py - y.start) / (y.end - y.start));
        let mut samples = Vec::new();
        for series in self.series {
            let points: Vec<(f64, f64)> = series.points.iter().map(unit).collect();
            samples.extend(points.first());
            for pair in points.windows(2) {
                let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
                samples.extend((1..=16).map(|k| {
                    let t = f64::from(k) / 16.0;
                    (ax + t * (bx - ax), ay + t * (by - ay))
                }));
            }
        }
        // The legend's size as a fraction of the plot: a line of 15-pixel text per series, about
        // 9 pixels per character plus the sample stroke.
        let longest = self.series.iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
        let w = ((longest * 9 + 60) as f64 / f64::from(WIDTH - 100)).min(1.0);
        let rows = self.series.iter().filter(|s| !s.name.is_empty()).count();
        let h = ((rows * 19 + 20) as f64 / f64::from(height - 100)).min(1.0);
        let corners = [
            (SeriesLabelPosition::LowerRight, 1.0 - w..1.0, 0.0..h),
            (SeriesLabelPosition::UpperRight, 1.0 - w..1.0, 1.0 - h..1.0),
            (SeriesLabelPosition::LowerLeft, 0.0..w, 0.0..h),
            (SeriesLabelPosition::UpperLeft, 0.0..w, 1.0 - h..1.0),
        ];
        let covered = |bx: &Range<f64>, by: &Range<f64>| {
            samples.iter().filter(|(px, py)| bx.contains(px) && by.contains(py)).count()
        };
        let (corner, _, _) = corners.into_iter().min_by_key(|(_, bx, by)| covered(bx, by)).expect("four corners");
        corner
    }
}

/// The x axis of a chart whose data spans `x0..x1`. A log axis spans at least a factor of 4:
/// over less, plotters ticks fractions of a doubling, which whole-number labels would repeat
/// ("2, 2, 3, 3"); a linear one at least 1.
pub fn x_axis(x0: f64, x1: f64, log_x: bool) -> Range<f64> {
    if log_x {
        x0..x1.max(4.0 * x0)
    } else {
        x0..x1.max(x0 + 1.0)
    }
}

/// Most labelled ticks on the x axis: plotters' default, fewer on a short linear axis of steps,
/// whose ticks would otherwise fall on half steps (printed as whole ones, twice each).
fn x_labels(span: Range<f64>, log_x: bool) -> usize {
    const MOST: usize = 10;
    match log_x {
        true => MOST,
        false => ((span.end - span.start).floor() as usize + 1).clamp(2, MOST),
    }
}

/// Where the segment from `a` to `b` meets the horizontal line y = `floor`.
fn crossing(a: (f64, f64), b: (f64, f64), floor: f64) -> (f64, f64) {
    let t = (floor - a.1) / (b.1 - a.1);
    (a.0 + t * (b.0 - a.0), floor)
}

/// The parts of a polyline on or above `floor`, each crossing cut where it meets the floor.
/// Plotters would instead pin points outside the range to the axis, drawing lines along it that
/// are not data.
fn clip_line(points: &[(f64, f64)], floor: f64) -> Vec<Vec<(f64, f64)>> {
    let mut pieces: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut previous: Option<(f64, f64)> = None;
    for &p in points {
        match previous {
            Some(a) if (a.1 >= floor) != (p.1 >= floor) => {
                let x = crossing(a, p, floor);
                if p.1 >= floor {
                    pieces.push(vec![x, p]);
                } else {
                    pieces.last_mut().expect("a piece is open above the floor").push(x);
                }
            }
            Some(a) if a.1 >= floor => pieces.last_mut().expect("a piece is open above the floor").push(p),
            None if p.1 >= floor => pieces.push(vec![p]),
            _ => {}
        }
        previous = Some(p);
    }
    pieces
}

/// The part of a polygon on or above `floor` (one edge of Sutherland-Hodgman clipping).
fn clip_polygon(points: &[(f64, f64)], floor: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for (i, &b) in points.iter().enumerate() {
        let a = points[(i + points.len() - 1) % points.len()];
        if (a.1 >= floor) != (b.1 >= floor) {
            out.push(crossing(a, b, floor));
        }
        if b.1 >= floor {
            out.push(b);
        }
    }
    out
}

/// The fewest decimals (at most 4) that write every tick exactly: "88" on a narrow percentage
/// axis rather than "88.00", "0.25" rather than "0.3" on a correlation axis.
fn tick_decimals(ticks: &[f64]) -> usize {
    let exact = |d: usize| {
        ticks.iter().all(|&t| format!("{t:.d$}").parse::<f64>().is_ok_and(|w| (w - t).abs() <= 1e-9 * t.abs().max(1.0)))
    };
    (0..4).find(|&d| exact(d)).unwrap_or(4)
}

/// A tick label with `decimals` decimals; a tick a rounding error below zero reads 0, not -0.
fn tick_label(y: f64, decimals: usize) -> String {
    let text = format!("{y:.decimals$}");
    match text.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_never_read_minus_zero() {
        assert_eq!(tick_label(-1e-17, 2), "0.00");
        assert_eq!(tick_label(-0.0, 0), "0");
        assert_eq!(tick_label(-0.1, 2), "-0.10");
        assert_eq!(tick_label(97.5, 0), "98");
    }

    #[test]
    fn tick_labels_have_the_decimals_the_axis_needs() {
        let decimals = |y: Range<f64>| tick_decimals(&RangedCoordf64::from(y).key_points(BoldPoints(Y_LABELS)));
        assert_eq!(decimals(82.0..88.3), 0, "a zoomed percentage axis");
        assert_eq!(decimals(0.0..100.0), 0);
        assert_eq!(decimals(-0.2..1.0), 1);
        assert_eq!(decimals(-0.1..0.35), 2);
        assert_eq!(tick_decimals(&[1e-7]), 4, "at most 4");
    }

    #[test]
    fn a_short_axis_of_steps_has_ticks_on_whole_steps() {
        for end in [1.0, 2.0, 4.0, 7.0, 9.5, 12.0, 256.0] {
            let span = 0.0..end;
            let ticks = RangedCoordf64::from(span.clone()).key_points(BoldPoints(x_labels(span, false)));
            assert!(ticks.len() >= 2 && ticks.iter().all(|t| t.fract() == 0.0), "0..{end}: {ticks:?}");
        }
        let half = RangedCoordf64::from(0.0..4.0).key_points(BoldPoints(10));
        assert!(half.iter().any(|t| t.fract() != 0.0), "plotters' default: {half:?}");
    }

    #[test]
    fn clipping_keeps_what_is_above_the_floor_and_cuts_at_it() {
        let line = [(0.0, 0.0), (1.0, 2.0), (2.0, 4.0), (3.0, 0.0), (4.0, 0.0), (5.0, 2.0)];
        let expected = vec![vec![(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.75, 1.0)], vec![(4.5, 1.0), (5.0, 2.0)]];
        assert_eq!(clip_line(&line, 1.0), expected);
        assert_eq!(clip_line(&line, 5.0), Vec::<Vec<(f64, f64)>>::new());
        assert_eq!(clip_line(&line, -1.0), vec![line.to_vec()]);
        // A square from y = 0 to 2 cut at y = 1: its upper half.
        let square = [(0.0, 0.0), (0.0, 2.0), (2.0, 2.0), (2.0, 0.0)];
        assert_eq!(clip_polygon(&square, 1.0), vec![(0.0, 1.0), (0.0, 2.0), (2.0, 2.0), (2.0, 1.0)]);
        assert!(clip_polygon(&square, 3.0).is_empty());
    }

    #[test]
    fn the_legend_goes_where_it_hides_the_least() {
        let line = |name: &str, points: &[(f64, f64)]| Series {
            name: name.into(),
            points: points.iter().map(|&(x, y)| (x, y, 0.0)).collect(),
            color: 0,
            dashed: false,
        };
        let corner = |series: &[Series], log_x: bool| {
            let chart = Chart { title: "", x_label: "", y_label: "", series, zoom_from: None, log_x };
            chart.legend_corner(&(1.0..64.0), &(0.0..1.0), HEIGHT)
        };
        let top = line("top", &[(1.0, 0.95), (64.0, 0.95)]);
        let bottom = line("bottom", &[(1.0, 0.05), (64.0, 0.05)]);
        assert_eq!(corner(std::slice::from_ref(&top), false), SeriesLabelPosition::LowerRight);
        assert_eq!(corner(std::slice::from_ref(&bottom), false), SeriesLabelPosition::UpperRight);
        // Rising to the upper right, with the bottom line: the upper left is free.
        let rising = line("rising", &[(32.0, 0.5), (64.0, 0.95)]);
        assert_eq!(corner(&[bottom, rising], false), SeriesLabelPosition::UpperLeft);
        // x = 50 is 78% of the way on a linear axis, 94% on a log one (under the legend).
        let low = line("low", &[(1.0, 0.05), (50.0, 0.05)]);
        assert_eq!(corner(std::slice::from_ref(&low), false), SeriesLabelPosition::LowerRight);
        assert_eq!(corner(&[low], true), SeriesLabelPosition::UpperRight);
        // Only named series have a legend row: one row clears a line at 9% of the height, two
        // rows reach it.
        let middle = line("middle", &[(1.0, 0.5), (64.0, 0.5)]);
        let unnamed = line("", &[(1.0, 0.09), (64.0, 0.09)]);
        assert_eq!(corner(&[middle.clone(), unnamed.clone()], false), SeriesLabelPosition::LowerRight);
        let named = Series { name: "named".into(), ..unnamed };
        assert_eq!(corner(&[middle, named], false), SeriesLabelPosition::UpperRight);
    }

    #[test]
    fn writes_a_png_of_the_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let series = [
            Series {
                name: "a".into(),
                points: vec![(0.0, 0.1, 0.01), (1.0, 0.5, 0.05), (2.0, 0.9, 0.02)],
                color: 0,
                dashed: false,
            },
            Series { name: "b".into(), points: vec![(0.0, 0.1, 0.0), (2.0, 0.6, 0.0)], color: 1, dashed: true },
            Series { name: "one point".into(), points: vec![(1.0, 0.3, 0.0)], color: 2, dashed: true },
        ];
        let chart = Chart {
            title: "test",
            x_label: "step",
            y_label: "accuracy",
            series: &series,
            zoom_from: None,
            log_x: false,
        };
        chart.write_png(&path).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        // Both series' lines are drawn, each in its own colour.
        let in_color = |image: &image::RgbImage, k: usize| {
            let RGBColor(r, g, b) = COLORS[k];
            image.pixels().filter(|p| p.0 == [r, g, b]).count()
        };
        for k in 0..2 {
            assert!(in_color(&image, k) > 300, "series {k}: {} pixels of its colour", in_color(&image, k));
        }
        // A series of one point is a dot (its legend entry is a line of some 40 pixels).
        assert!(in_color(&image, 2) > 80, "{} pixels of the one point's colour", in_color(&image, 2));

        Chart { zoom_from: Some(0.5), ..chart }.write_png(&path).unwrap();
        let zoomed = image::open(&path).unwrap().to_rgb8();
        assert_eq!(zoomed.dimensions(), (WIDTH, HEIGHT + ZOOM_HEIGHT));
        // The first series' line is drawn in the zoomed panel, in its own colour.
        let lower = image::imageops::crop_imm(&zoomed, 0, HEIGHT, WIDTH, ZOOM_HEIGHT).to_image();
        let line = in_color(&lower, 0);
        assert!(line > 500, "zoomed panel: {line} pixels of the first series' colour");
        // A zoom floor at or above every point shows nothing: no panel.
        Chart { zoom_from: Some(1.0), ..chart }.write_png(&path).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (WIDTH, HEIGHT));

        // A log axis refuses x = 0 (series "a" starts there).
        let log = Chart { log_x: true, ..chart }.write_png(&path).unwrap_err();
        assert!(log.to_string().contains("needs positive x"), "{log}");

        let empty = Chart { title: "empty", x_label: "x", y_label: "y", series: &[], zoom_from: None, log_x: false };
        let empty = empty.write_png(&path).unwrap_err();
        assert!(empty.to_string().contains("nothing to plot"), "{empty}");
    }
}
