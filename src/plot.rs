//! Line charts as PNG files: a mean line per series with a shaded band for its spread.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Bundled so that charts render the same on machines without system fonts (DejaVu licence in
/// `assets/fonts`).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

/// One line of a chart: points `(x, mean, spread)`; the band covers mean ± spread.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
}

const WIDTH: u32 = 960;
const HEIGHT: u32 = 640;

fn register() {
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
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        // Enough decimals that neighbouring tick labels differ (percentages vs correlations).
        let y_decimals = if y1 - y0 >= 10.0 { 0 } else { 2 };
        let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
            let draw_err = |e: DrawingAreaErrorKind<_>| anyhow!("{}: cannot draw: {e:?}", output.display());
            root.fill(&WHITE).map_err(draw_err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(self.title, (FAMILY, 22))
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc(self.x_label)
                .y_desc(self.y_label)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
                .label_style((FAMILY, 15))
                .axis_desc_style((FAMILY, 17))
                .draw()
                .map_err(draw_err)?;
            for (i, series) in self.series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let upper = series.points.iter().map(|&(x, m, s)| (x, m + s));
                let lower = series.points.iter().rev().map(|&(x, m, s)| (x, m - s));
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        upper.chain(lower).collect::<Vec<_>>(),
                        color.mix(0.15).filled(),
                    )))
                    .map_err(draw_err)?;
                chart
                    .draw_series(LineSeries::new(series.points.iter().map(|&(x, m, _)| (x, m)), color.stroke_width(2)))
                    .map_err(draw_err)?
                    .label(series.name.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FAMILY, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(draw_err)?;
            root.present().map_err(draw_err)?;
        }
        let image = image::RgbImage::from_raw(WIDTH, HEIGHT, buffer).expect("buffer has the image's size");
        crate::atomic::replace_with(output, |tmp| {
            image
                .save_with_format(tmp, image::ImageFormat::Png)
                .with_context(|| format!("{}: cannot write", output.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let series = [
            Series { name: "a".into(), points: vec![(0.0, 0.1, 0.01), (1.0, 0.5, 0.05), (2.0, 0.9, 0.02)] },
            Series { name: "b".into(), points: vec![(0.0, 0.1, 0.0), (2.0, 0.6, 0.0)] },
        ];
        Chart { title: "test", x_label: "step", y_label: "accuracy", series: &series }.write_png(&path).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        // Something other than the white background was drawn: lines, text, bands.
        let non_white = image.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(non_white > 5_000, "{non_white} non-white pixels");
        let empty = Chart { title: "empty", x_label: "x", y_label: "y", series: &[] }.write_png(&path).unwrap_err();
        assert!(empty.to_string().contains("nothing to plot"), "{empty}");
    }
}
