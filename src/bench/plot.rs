//! `--plot FILE.svg` (or `.png`): p50 round trip against payload size, log-log, one
//! line per transport with a p99 whisker at each point, the raw baselines
//! thin, and the floors as dashed lines; one panel per placement.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use super::report::{Cell, Placement, Report};
use crate::units::fmt_size;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn fmt_us(v: f64) -> String {
    crate::units::fmt_duration(std::time::Duration::from_nanos((v * 1000.0) as u64))
}

/// Draw `report` into `path`: SVG, or PNG (the same SVG, rasterised at
/// twice its size with an embedded font, so no system font is needed).
pub fn draw(report: &Report, path: &Path) -> io::Result<()> {
    let ext = check_path(path)?;
    let svg = svg_string(report)?;
    if ext == "svg" {
        std::fs::write(path, svg)
    } else {
        std::fs::write(path, rasterise(&svg)?)
    }
    .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// The format `path` asks for (`svg` or `png`), or an error that says which
/// names are understood; checked before a run, not after it.
pub fn check_path(path: &Path) -> io::Result<String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext != "svg" && ext != "png" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--plot writes SVG or PNG: name the file *.svg or *.png (got '{}')",
                path.display()
            ),
        ));
    }
    Ok(ext)
}

/// The plot as an SVG document.
pub fn svg_string(report: &Report) -> io::Result<String> {
    let placements = report.environment.placements.clone();
    let panels = placements.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1280, 680 * panels)).into_drawing_area();
        draw_on(report, &placements, root)
            .map_err(|e| io::Error::other(format!("drawing the plot: {e}")))?;
    }
    Ok(svg)
}

/// Render an SVG document to PNG bytes at 2× (sharp on high-density screens).
fn rasterise(svg: &str) -> io::Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    let fonts = opt.fontdb_mut();
    fonts.load_font_data(dejavu::sans::regular().to_vec());
    fonts.set_sans_serif_family("DejaVu Sans");
    let tree = usvg::Tree::from_str(svg, &opt)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("the plot's SVG: {e}")))?;
    let scale = 2.0;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .ok_or_else(|| io::Error::other("the plot is too large to rasterise"))?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| io::Error::other("the plot is too large to rasterise"))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| io::Error::other(format!("encoding the PNG: {e}")))
}

/// Line colours: Tableau's ten, then ten darker ones, all legible on
/// white (plotters' `Palette99` has pale yellows and pinks that vanish
/// once there are more than a dozen lines).
const PALETTE: [(u8, u8, u8); 20] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
    (0xbc, 0xbd, 0x22),
    (0x17, 0xbe, 0xcf),
    (0x39, 0x3b, 0x79),
    (0x63, 0x79, 0x39),
    (0x8c, 0x6d, 0x31),
    (0x84, 0x3c, 0x39),
    (0x7b, 0x41, 0x73),
    (0x31, 0x82, 0xbd),
    (0xe6, 0x55, 0x0d),
    (0x31, 0xa3, 0x54),
    (0x75, 0x6b, 0xb1),
    (0x36, 0x36, 0x36),
];

fn draw_on<DB: DrawingBackend>(
    report: &Report,
    placements: &[Placement],
    root: DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    // One colour per transport for the whole figure, in order of first
    // appearance (the registry's order), whatever its rank in a panel.
    let mut order: Vec<&str> = Vec::new();
    for c in &report.results {
        if !order.contains(&c.transport.as_str()) {
            order.push(&c.transport);
        }
    }
    let colour = |name: &str| {
        let (r, g, b) = PALETTE[order.iter().position(|n| *n == name).unwrap_or(0) % PALETTE.len()];
        RGBColor(r, g, b).to_rgba()
    };
    let areas = root.split_evenly((placements.len().max(1), 1));
    for (panel, &placement) in areas.iter().zip(placements) {
        // The chart on the left, its legend in a column of its own: a
        // legend inside the chart would hide data.
        let (area, legend_area) = panel.split_horizontally(panel.dim_in_pixel().0 as i32 - 300);
        let cells: Vec<&Cell> = report
            .results
            .iter()
            .filter(|c| c.placement == placement && c.error.is_none() && c.round_trips > 0)
            .collect();
        if cells.is_empty() {
            continue;
        }
        let sizes = &report.environment.sizes_bytes;
        let (xmin, xmax) = (
            *sizes.iter().min().unwrap_or(&1) as f64 / 1.5,
            *sizes.iter().max().unwrap_or(&1) as f64 * 1.5,
        );
        let floors: Vec<(String, f64)> = report
            .floors
            .iter()
            .filter(|f| {
                f.placement == placement
                    || f.placement == Placement::None
                    || placement == Placement::SameCore
            })
            .map(|f| (f.name.clone(), f.ns / 1000.0))
            .collect();
        let lo = cells
            .iter()
            .map(|c| us(c.p50_ns))
            .chain(floors.iter().map(|f| f.1))
            .fold(f64::MAX, f64::min)
            / 2.0;
        let hi = cells
            .iter()
            .map(|c| us(c.p99_ns.max(c.p50_ns)))
            .fold(0.0, f64::max)
            * 2.0;
        let title = format!(
            "ipclab bench: round trip p50 (whisker to p99), {placement}, {} CPU(s)",
            report.environment.cores
        );
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 24))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (xmin..xmax)
                    .log_scale()
                    .with_key_points(sizes.iter().map(|&s| s as f64).collect()),
                (lo.max(1e-3)..hi.max(1.0)).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("payload size")
            .y_desc("round trip (µs)")
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .x_label_formatter(&|v| fmt_size(v.round() as usize))
            .y_label_formatter(&|v| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            })
            .draw()?;

        // Transports in the order of the table (fastest first at the
        // smallest size), baselines after.
        let mut names: Vec<(&str, bool)> = Vec::new();
        for c in &cells {
            if !names.iter().any(|(n, _)| *n == c.transport) {
                names.push((&c.transport, c.baseline));
            }
        }
        names.sort_by_key(|(n, base)| {
            let first = cells
                .iter()
                .filter(|c| c.transport == *n)
                .min_by_key(|c| c.size_bytes)
                .map_or(u64::MAX, |c| c.p50_ns);
            (*base, first)
        });
        let mut legend: Vec<(String, RGBAColor, u32, bool)> = Vec::new();
        for (name, baseline) in &names {
            let color = colour(name);
            let mut pts: Vec<&&Cell> = cells.iter().filter(|c| c.transport == *name).collect();
            pts.sort_by_key(|c| c.size_bytes);
            let line: Vec<(f64, f64)> = pts
                .iter()
                .map(|c| (c.size_bytes as f64, us(c.p50_ns)))
                .collect();
            let width = if *baseline { 1 } else { 3 };
            let label = if *baseline {
                format!("{name} (reference)")
            } else {
                name.to_string()
            };
            chart.draw_series(LineSeries::new(line.clone(), color.stroke_width(width)))?;
            legend.push((label, color, width, false));
            chart.draw_series(
                line.iter()
                    .map(|&p| Circle::new(p, if *baseline { 2 } else { 4 }, color.filled())),
            )?;
            chart.draw_series(pts.iter().map(|c| {
                let x = c.size_bytes as f64;
                PathElement::new(
                    vec![(x, us(c.p50_ns)), (x, us(c.p99_ns))],
                    color.stroke_width(1),
                )
            }))?;
        }
        for (name, v) in &floors {
            let style = BLACK.mix(0.6).stroke_width(1);
            chart.draw_series(DashedLineSeries::new(
                vec![(xmin, *v), (xmax, *v)],
                6,
                6,
                style,
            ))?;
            legend.push((
                format!("floor: {name}, {}", fmt_us(*v)),
                BLACK.mix(0.6),
                1,
                true,
            ));
        }
        // The legend column.
        let font = ("sans-serif", 15).into_font();
        let mut y = 70;
        for (label, color, width, dashed) in &legend {
            if *dashed {
                for k in 0..3 {
                    legend_area.draw(&PathElement::new(
                        vec![(10 + 10 * k, y), (16 + 10 * k, y)],
                        color.stroke_width(*width),
                    ))?;
                }
            } else {
                legend_area.draw(&PathElement::new(
                    vec![(10, y), (40, y)],
                    color.stroke_width((*width).max(2)),
                ))?;
                legend_area.draw(&Circle::new((25, y), 3, color.filled()))?;
            }
            // Long floor labels wrap after the comma.
            let (first, rest) = label.split_once(", ").unwrap_or((label.as_str(), ""));
            legend_area.draw(&Text::new(first.to_string(), (48, y - 8), font.clone()))?;
            if !rest.is_empty() {
                legend_area.draw(&Text::new(rest.to_string(), (48, y + 9), font.clone()))?;
                y += 18;
            }
            y += 26;
        }
    }
    root.present()?;
    Ok(())
}
