//! `Plan::profile`: one time per dispatch, in run order, from GPU timestamps where the
//! adapter has them (wall time otherwise).

mod common;

use modelbatch::{DType, Graph, Plan};

#[test]
fn profile_times_every_dispatch_in_order() {
    let gpu = gpu_or_skip!();
    let mut graph = Graph::new(3);
    let x = graph.input("x", &[64, 32], DType::F32).unwrap();
    let w = graph.param("w", &[16, 32]).unwrap();
    let y = graph.linear(x, w, None).unwrap();
    let z = graph.relu(y).unwrap();
    let s = graph.sum(z, &[1, 2]).unwrap();
    let plan = Plan::new(gpu, &graph, &[s], &[]).unwrap();
    plan.write(x, &common::randn(1, 3 * 64 * 32)).unwrap();
    plan.write(w, &common::randn(2, 3 * 16 * 32)).unwrap();
    let rows = plan.profile().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r.0).collect();
    assert_eq!(labels, plan.dispatch_labels());
    // Each dispatch's kernel: its entry point with its constants, and its grid.
    let kernels = plan.dispatch_kernels();
    assert_eq!(kernels.iter().map(|k| k.0).collect::<Vec<_>>(), labels);
    let (_, name, grid) = &kernels[0];
    // (Workgroup side `WG`, or `SK` slices where the tuning splits the depth.)
    assert!(name.starts_with("linear::gemm") && (name.contains("WG=") || name.contains("SK=")), "{name}");
    assert!(grid[2] == 3 && grid.iter().all(|&n| n >= 1), "{grid:?}");
    assert!(rows.iter().all(|r| r.1.is_finite() && r.1 >= 0.0), "{rows:?}");
    assert!(rows.iter().any(|r| r.1 > 0.0), "some dispatch takes time: {rows:?}");
    // Profiling runs the plan: the result is there afterwards, as after `run`.
    let after_profile = plan.read_blocking(s).unwrap();
    plan.run().unwrap();
    assert_eq!(plan.read_blocking(s).unwrap(), after_profile);
    eprintln!("timestamps: {}", gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY));
}
