//! What the user sees while and after training: a progress bar on a terminal (plain lines
//! otherwise) and the results table.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress on stderr: a bar with samples/s and ETA on a terminal, else plain lines at
/// metrics readbacks (at most one a second, and the last one).
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The step this run started from (a resumed run's first step) and the last one.
    first: u64,
    total: u64,
    samples_per_step: u64,
    start: Instant,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(first: u64, total: u64, samples_per_step: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} steps  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message("warming up");
            bar.set_position(first);
            bar
        });
        Progress { bar, first, total, samples_per_step, start: Instant::now(), last_line: None }
    }

    /// `submitted` steps handed to the GPU so far.
    pub fn submitted(&self, submitted: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(submitted);
        }
    }

    /// Metrics arrived up to step `done` (count of completed steps); `loss` is the mean
    /// loss of the live models at that step.
    pub fn metrics(&mut self, done: u64, loss: f64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let ran = done.saturating_sub(self.first);
        let rate = ran as f64 * self.samples_per_step as f64 / secs;
        let eta = if ran == 0 { None } else { Some(secs * (self.total - done.min(self.total)) as f64 / ran as f64) };
        let eta = eta.map_or("?".to_string(), fmt_secs);
        match &self.bar {
            Some(bar) => bar.set_message(format!("mean loss {}  {} samples/s  ETA {eta}", fmt_loss(loss), group(rate))),
            None => {
                let now = Instant::now();
                let due = self.last_line.is_none_or(|t| now - t >= Duration::from_secs(1)) || done >= self.total;
                if due {
                    self.last_line = Some(now);
                    eprintln!("step {done}/{}  mean loss {loss:.4}  {} samples/s  ETA {eta}", self.total, group(rate));
                }
            }
        }
    }

    /// A message that must not garble the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `12345.6` → `12,346`.
pub fn group(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// A loss for people: 4 decimals, or scientific notation when huge.
pub fn fmt_loss(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e4 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

pub fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// Right-aligned columns, two spaces apart.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:>width$}", width = w[i])).collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(header);
    for r in rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

/// Top-1 accuracy across models (a seed study's answer): mean, sample standard deviation,
/// min and max of the models' fractions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub models: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var =
            if n > 1 { values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        Some(Spread { models: n, mean, std: var.sqrt(), min, max })
    }

    /// `top-1 over 16 models: mean 93.41%, std 1.23% (min 91.58%, max 95.51%)`.
    pub fn line(&self) -> String {
        format!(
            "top-1 over {} models: mean {:.2}%, std {:.2}% (min {:.2}%, max {:.2}%)",
            self.models,
            100.0 * self.mean,
            100.0 * self.std,
            100.0 * self.min,
            100.0 * self.max
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"models": self.models, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max})
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread() {
        let s = super::Spread::of(&[0.9, 0.92, 0.94]).unwrap();
        assert_eq!(s.models, 3);
        assert!((s.mean - 0.92).abs() < 1e-12 && (s.std - 0.02).abs() < 1e-12, "{s:?}");
        assert_eq!((s.min, s.max), (0.9, 0.94));
        assert_eq!(super::Spread::of(&[0.5]).unwrap().std, 0.0);
        assert!(super::Spread::of(&[]).is_none());
        assert_eq!(s.line(), "top-1 over 3 models: mean 92.00%, std 2.00% (min 90.00%, max 94.00%)");
    }
}
