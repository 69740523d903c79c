//! Draws the cold-start chart for the README: one horizontal bar per
//! (module, command) from `scripts/bench-coldstart --json` output, on a log
//! time axis, wasmtime's bars and wasmlet's in different colours.
//!
//! Usage: cargo run --release --example coldstart_chart -- RESULTS.json OUT.png
//! (needs a TrueType font: DejaVu Sans from Debian's fonts-dejavu-core, or
//! the file named by WASMLET_CHART_FONT).
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

#[derive(serde::Deserialize)]
struct Bar {
    module: String,
    command: String,
    seconds: f64,
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: coldstart_chart RESULTS.json OUT.png".into());
    };
    let bars: Vec<Bar> = serde_json::from_str(&std::fs::read_to_string(&input)?)?;
    if bars.is_empty() {
        return Err(format!("{input}: no results").into());
    }
    let font_path = std::env::var("WASMLET_CHART_FONT").unwrap_or_else(|_| FONT.into());
    let font = std::fs::read(&font_path).map_err(|e| format!("font {font_path}: {e}"))?;
    // The font lives as long as the process: leaking it is what
    // `register_font`'s 'static bound asks for.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{font_path} is not a usable TrueType font"))?;

    let min = bars.iter().map(|b| b.seconds).fold(f64::INFINITY, f64::min);
    let max = bars.iter().map(|b| b.seconds).fold(0.0, f64::max);
    let (lo, hi) = (min / 2.0, max * 2.0);
    let height = 120 + 34 * bars.len() as u32;
    let root = BitMapBackend::new(&output, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<String> = bars
        .iter()
        .map(|b| format!("{}: {}", b.module, b.command))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Process cold start, median, log scale (grey: wasmtime; green: wasmlet; blue: wasmlet from a snapshot)",
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(430)
        .build_cartesian_2d((lo..hi).log_scale(), (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("seconds")
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let colour = if b.command.starts_with("wasmtime") {
            RGBColor(150, 150, 150)
        } else if b.command.contains("from the snapshot")
            || b.module.contains("(snapshot)")
            || b.module.ends_with("snapshot")
        {
            RGBColor(30, 120, 200)
        } else {
            RGBColor(90, 170, 90)
        };
        let mut bar = Rectangle::new(
            [
                (lo, SegmentValue::Exact(i)),
                (b.seconds, SegmentValue::Exact(i + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(5, 5, 0, 0);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let text = if b.seconds < 1e-3 {
            format!("{:.0} µs", b.seconds * 1e6)
        } else {
            format!("{:.2} ms", b.seconds * 1e3)
        };
        Text::new(
            text,
            (b.seconds * 1.1, SegmentValue::CenterOf(i)),
            ("sans-serif", 13).into_font(),
        )
    }))?;
    root.present()?;
    eprintln!("wrote {output}");
    Ok(())
}
