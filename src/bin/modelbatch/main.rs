//! `modelbatch`: train, evaluate and inspect batches of G independent models from the
//! command line.
//!
//! ```text
//! modelbatch info
//! modelbatch train --models 64 --lr log:0.001:0.1 --momentum 0.9 --epochs 1 --out runs/sweep
//! modelbatch train --models 64 --epochs 20 --checkpoint runs/ck   # run again to continue
//! modelbatch train --models 32 --lr log:0.001:0.3 --pbt 200 --ensemble
//! modelbatch eval --models 64 --weights runs/sweep --json
//! modelbatch bench --models 1,8,64 --batch-size 128 --steps 10
//! modelbatch tune --models 64 && modelbatch --tuning conv_lanes=128 bench --models 64
//! ```
//!
//! Every failure is one line on stderr starting with `error: ` and naming the file or flag
//! at fault, with exit status 1; `train --out` never leaves a partial output directory.

#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod checkpoint;
#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod ensemble;
#[cfg(not(target_arch = "wasm32"))]
mod eval;
#[cfg(not(target_arch = "wasm32"))]
mod hyper;
#[cfg(not(target_arch = "wasm32"))]
mod inputs;
#[cfg(not(target_arch = "wasm32"))]
mod interrupt;
#[cfg(not(target_arch = "wasm32"))]
mod output;
#[cfg(not(target_arch = "wasm32"))]
mod pbt;
#[cfg(not(target_arch = "wasm32"))]
mod report;
#[cfg(not(target_arch = "wasm32"))]
mod train;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use clap::Parser;

    quiet_mesa();
    std::panic::set_hook(Box::new(|info| {
        // A bug, not a user error: still one line, no backtrace, and no partial output.
        output::cleanup_on_panic();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error: {}{at}", cli::one_line(&msg));
        std::process::exit(1);
    }));
    let args = cli::Cli::parse();
    interrupt::install();
    if let Some(text) = &args.tuning {
        // Checked here (against the adapter when a device opens); every device the command
        // opens, shards included, reads it from the environment.
        if let Err(e) = modelbatch::Tuning::default().apply(text) {
            eprintln!("error: --tuning: {e}");
            std::process::exit(1);
        }
        // Single-threaded at this point: no other thread reads the environment.
        std::env::set_var("MODELBATCH_TUNING", text);
    }
    let result = match args.command {
        cli::Command::Info => info(),
        cli::Command::Train(a) => train::run(&a),
        cli::Command::Eval(a) => eval::run(&a),
        cli::Command::Bench(a) => bench::run(&a),
        cli::Command::Tune(a) => bench::tune(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(if e.is_interrupt() { interrupt::EXIT } else { 1 });
    }
}

/// The command-line program is native only.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn info() -> cli::Result<()> {
    let gpu = modelbatch::Gpu::new_blocking()?;
    println!("{}", gpu.report());
    Ok(())
}

/// Mesa complains on stderr at every adapter enumeration when `XDG_RUNTIME_DIR` is unset;
/// give it a private directory so that stderr carries only progress and errors.
#[cfg(not(target_arch = "wasm32"))]
fn quiet_mesa() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("modelbatch-xdg-{}", user_tag()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_err() {
            return;
        }
    }
    // Single-threaded at this point: no other thread reads the environment.
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
}

#[cfg(not(target_arch = "wasm32"))]
fn user_tag() -> String {
    std::env::var("USER").unwrap_or_else(|_| "user".into())
}
