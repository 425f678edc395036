//! Prints where a LeNet training step spends its time, dispatch by dispatch (each run
//! alone and waited for), sorted by cost, with each dispatch's kernel (entry point and
//! override constants) and grid of workgroups:
//! `cargo run --release --example profile_step -- [G] [N] [R] [TUNING]`. With R > 1 the step
//! is profiled R times and each dispatch shows its fastest time (on a machine shared with
//! other work, the least disturbed one).
//!
//! With TUNING (keys as `MODELBATCH_TUNING` takes them, applied on top of the adapter's
//! tuning), a second step is planned under it and the two are profiled in turn, R times
//! each, to compare kernels in one process on a machine whose speed drifts: each dispatch's
//! time is taken as a share of the dispatches whose kernel and grid both steps share
//! (whatever the machine's speed in that round), and the medians of those shares are
//! compared, B (TUNING) against A (the adapter's tuning).

use modelbatch::bench::synthetic_dataset;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Optimizer, TrainConfig, Trainer};
use modelbatch::{Gpu, Sgd};

type Kernels = Vec<(&'static str, String, [u32; 3])>;

fn trainer<'a>(gpu: &'a Gpu, spec: &ModelSpec, model: &'a BatchModel, n: usize) -> modelbatch::Result<Trainer<'a>> {
    let data = synthetic_dataset(spec, 4 * n, 1);
    let config = TrainConfig { batch_size: n, ..TrainConfig::default() };
    let mut trainer = Trainer::new(gpu, model, &data, Optimizer::Sgd(Sgd::new(0.01).momentum(0.9)), config)?;
    trainer.train(1, |_| {})?;
    trainer.finish(|_| {})?;
    Ok(trainer)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut num = |default: usize| args.next().map(|a| a.parse::<usize>()).transpose().map(|v| v.unwrap_or(default));
    let g = num(8)?;
    let n = num(128)?;
    let repeats = num(1)?.max(1);
    let other = args.next();
    let gpu = Gpu::new_blocking()?;
    let spec = ModelSpec::lenet();
    let model = BatchModel::new(&gpu, &spec, g, 0)?;
    let trainer_a = trainer(&gpu, &spec, &model, n)?;
    let plan = trainer_a.plan();
    let how = if gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        "GPU timestamps"
    } else {
        "wall time, one submit per dispatch"
    };
    let name = gpu.report().name;
    if let Some(text) = other {
        let gpu_b = gpu.with_tuning(gpu.tuning().apply(&text)?)?;
        let model_b = BatchModel::new(&gpu_b, &spec, g, 0)?;
        let trainer_b = trainer(&gpu_b, &spec, &model_b, n)?;
        return compare(plan, trainer_b.plan(), repeats, &format!("G={g} N={n} on {name} ({how})"), &text);
    }
    let mut times = plan.profile()?;
    for _ in 1..repeats {
        for (best, (_, t)) in times.iter_mut().zip(plan.profile()?) {
            best.1 = best.1.min(t);
        }
    }
    // (A split batch's copies are rows of their own: then no kernel column.)
    let kernels = plan.dispatch_kernels();
    let mut rows: Vec<_> = if kernels.len() == times.len() {
        times.iter().zip(&kernels).map(|(&(label, t), (_, k, grid))| (label, t, format!("{k} {grid:?}"))).collect()
    } else {
        times.iter().map(|&(label, t)| (label, t, String::new())).collect()
    };
    let total: f64 = rows.iter().map(|r| r.1).sum();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let of = if repeats > 1 { format!(", fastest of {repeats}") } else { String::new() };
    println!("G={g} N={n} on {name}: {:.1} ms in {} dispatches ({how}{of})", total * 1e3, rows.len());
    for (label, t, kernel) in rows {
        println!("{:>9.3} ms {:>5.1}%  {label:<26} {kernel}", t * 1e3, 100.0 * t / total);
    }
    Ok(())
}

/// Profiles plans `a` and `b` in turn `rounds` times each and prints, per dispatch, the
/// medians of its share of the dispatches both plans run alike (same kernel, same grid).
fn compare(
    a: &modelbatch::Plan,
    b: &modelbatch::Plan,
    rounds: usize,
    what: &str,
    text: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let (ka, kb): (Kernels, Kernels) = (a.dispatch_kernels(), b.dispatch_kernels());
    // Dispatch i of A and of B correspond where both plans have the same dispatch labels.
    let aligned = ka.len() == kb.len() && ka.iter().zip(&kb).all(|(x, y)| x.0 == y.0);
    let same: Vec<bool> = (0..ka.len()).map(|i| aligned && ka[i].1 == kb[i].1 && ka[i].2 == kb[i].2).collect();
    let reference =
        |times: &[(&str, f64)]| -> f64 { times.iter().zip(&same).filter(|(_, s)| **s).map(|(t, _)| t.1).sum::<f64>() };
    let (mut sa, mut sb) = (vec![Vec::new(); ka.len()], vec![Vec::new(); kb.len()]);
    let (mut tot_a, mut tot_b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (ta, tb) = (a.profile()?, b.profile()?);
        if ta.len() != ka.len() || tb.len() != kb.len() {
            return Err("a step with copies between chunks: compare the plain profiles instead".into());
        }
        let (total_a, total_b) = (ta.iter().map(|t| t.1).sum::<f64>(), tb.iter().map(|t| t.1).sum::<f64>());
        tot_a.push(total_a);
        tot_b.push(total_b);
        ratio.push(total_b / total_a);
        // Without shared dispatches (or not aligned), shares of the whole step.
        let (ra, rb) = match reference(&ta) {
            r if r > 0.0 => (r, reference(&tb)),
            _ => (total_a, total_b),
        };
        for (i, t) in ta.iter().enumerate() {
            sa[i].push(t.1 / ra);
        }
        for (i, t) in tb.iter().enumerate() {
            sb[i].push(t.1 / rb);
        }
    }
    println!(
        "{what}, A: the adapter's tuning, B: {text}; {rounds} rounds in turn: step A {:.1} ms, B {:.1} ms (medians), B/A {:.3} (median of the rounds' ratios)",
        median(&mut tot_a) * 1e3,
        median(&mut tot_b) * 1e3,
        median(&mut ratio)
    );
    if !aligned {
        println!("(the two steps run different dispatches: only the totals compare)");
        return Ok(());
    }
    let mut rows: Vec<(f64, f64, usize)> = (0..ka.len()).map(|i| (median(&mut sa[i]), median(&mut sb[i]), i)).collect();
    rows.sort_by(|x, y| y.0.total_cmp(&x.0));
    println!("share A   share B    B/A  dispatch (kernel A | kernel B where it differs)");
    for (fa, fb, i) in rows {
        let kernel = if same[i] {
            format!("{} {:?}", ka[i].1, ka[i].2)
        } else {
            format!("{} {:?} | {} {:?}", ka[i].1, ka[i].2, kb[i].1, kb[i].2)
        };
        let mark = if same[i] { ' ' } else { '*' };
        println!("{fa:>7.4}  {fb:>7.4}  {:>5.3}{mark} {:<26} {kernel}", fb / fa, ka[i].0);
    }
    Ok(())
}
