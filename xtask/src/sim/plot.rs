//! The simulation's plots (PNG, plotters), with DejaVu Sans (Debian's
//! fonts-dejavu-core) for the text.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use super::{Args, Node, Report, Seen};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can use"))?;
    let _ = DONE.set(());
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn lines(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let root: Area<'_> = BitMapBackend::new(path, (1100, 550)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("hours since publication")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (k, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes every plot into `out`.
pub fn all(
    out: &Path,
    args: &Args,
    nodes: &[Node],
    seen: &[Seen],
    r: &Report,
) -> anyhow::Result<()> {
    register_font()?;
    let hours = r.simulated_hours.max(1.0);
    let minutes = (hours * 60.0).ceil() as usize + 1;

    // Channel requests per minute.
    let mut polls = vec![0f64; minutes];
    for s in seen {
        if let Seen::Poll(t) = s {
            if let Some(m) = polls.get_mut((*t / 60) as usize) {
                *m += 1.0;
            }
        }
    }
    let polls: Vec<(f64, f64)> = polls
        .iter()
        .enumerate()
        .map(|(m, &v)| (m as f64 / 60.0, v))
        .collect();
    lines(
        &out.join("polls.png"),
        "Channel requests per minute (the CDN's load)",
        "requests per minute",
        &[("requests".into(), polls)],
    )?;

    // Nodes updated over time, per tenth of the waves.
    let mut per_decile: Vec<Vec<u64>> = vec![Vec::new(); 10];
    for n in nodes {
        if let Some(t) = n.updated_at {
            per_decile[((n.wave * 10.0) as usize).min(9)].push(t);
        }
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = per_decile
        .into_iter()
        .enumerate()
        .map(|(d, mut ts)| {
            ts.sort();
            let mut pts = vec![(0.0, 0.0)];
            for (k, t) in ts.iter().enumerate() {
                pts.push((*t as f64 / 3600.0, (k + 1) as f64));
            }
            pts.push((hours, ts.len() as f64));
            (format!("waves {}–{} %", d * 10, d * 10 + 10), pts)
        })
        .collect();
    lines(
        &out.join("updated.png"),
        "Nodes updated, per tenth of the waves",
        "nodes updated",
        &series,
    )?;

    // Reboots in flight, per minute: the worst group and the fleet.
    let mut ev: Vec<(u64, u64, u32, i32)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Acquired { seq, group, at } => Some((*at, *seq, *group, 1)),
            Seen::Released { seq, group, at } => Some((*at, *seq, *group, -1)),
            _ => None,
        })
        .collect();
    ev.sort();
    let mut group = vec![0i32; args.groups as usize];
    let mut fleet = 0i32;
    let mut worst_pm = vec![0f64; minutes];
    let mut fleet_pm = vec![0f64; minutes];
    let mut k = 0;
    for m in 0..minutes {
        // What holds entering the minute, then its changes.
        let mut worst = group.iter().copied().max().unwrap_or(0);
        let mut most = fleet;
        while k < ev.len() && ((ev[k].0 / 60) as usize) <= m {
            let (_, _, g, d) = ev[k];
            group[g as usize] += d;
            fleet += d;
            worst = worst.max(group[g as usize]);
            most = most.max(fleet);
            k += 1;
        }
        worst_pm[m] = f64::from(worst);
        fleet_pm[m] = f64::from(most);
    }
    let pts = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(m, &x)| (m as f64 / 60.0, x))
            .collect()
    };
    let limit: Vec<(f64, f64)> = vec![
        (0.0, f64::from(args.max_rebooting)),
        (hours, f64::from(args.max_rebooting)),
    ];
    lines(
        &out.join("in-flight.png"),
        "Reboots in flight (lock holders), the most per minute",
        "nodes rebooting",
        &[
            ("worst group".into(), pts(&worst_pm)),
            ("limit per group".into(), limit),
            ("whole fleet".into(), pts(&fleet_pm)),
        ],
    )?;

    // Lock operations and conflicts per node.
    let max_ops = nodes
        .iter()
        .map(|n| n.ops.load(std::sync::atomic::Ordering::Relaxed))
        .max()
        .unwrap_or(0) as usize;
    let mut ops = vec![0f64; max_ops + 2];
    let mut conflicts = vec![0f64; max_ops + 2];
    for n in nodes {
        ops[n.ops.load(std::sync::atomic::Ordering::Relaxed) as usize] += 1.0;
        let c = (n.conflicts.load(std::sync::atomic::Ordering::Relaxed) as usize).min(max_ops + 1);
        conflicts[c] += 1.0;
    }
    let path = out.join("lock-ops.png");
    let root: Area<'_> = BitMapBackend::new(&path, (1100, 550)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = ops
        .iter()
        .chain(conflicts.iter())
        .fold(1.0f64, |a, &b| a.max(b))
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Lock operations and compare-and-swap conflicts per node",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..(max_ops + 2) as f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("operations (or conflicts) of one node")
        .y_desc("nodes")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (k, (name, v, dx)) in [
        ("lock operations", &ops, 0.0),
        ("CAS conflicts", &conflicts, 0.4),
    ]
    .into_iter()
    .enumerate()
    {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(
                v.iter()
                    .enumerate()
                    .filter(|(_, &y)| y > 0.0)
                    .map(|(x, &y)| {
                        Rectangle::new(
                            [(x as f64 + dx, 0.0), (x as f64 + dx + 0.4, y)],
                            color.filled(),
                        )
                    }),
            )?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
