mod common;
use modelbatch::{Graph, Plan};

#[test]
fn linear_forward_smoke() {
    let gpu = gpu_or_skip!();
    println!("{}", gpu.report());
    let (g, n, k, m) = (3, 5, 8, 6);
    let mut graph = Graph::new(g);
    let x = graph.param("x", &[n, k]).unwrap();
    let w = graph.param("w", &[m, k]).unwrap();
    let b = graph.param("b", &[m]).unwrap();
    let y = graph.linear(x, w, Some(b)).unwrap();
    let plan = Plan::new(gpu, &graph, &[y], &[]).unwrap();
    let (xv, wv, bv) = (common::randn(1, g * n * k), common::randn(2, g * m * k), common::randn(3, g * m));
    plan.write(x, &xv).unwrap();
    plan.write(w, &wv).unwrap();
    plan.write(b, &bv).unwrap();
    plan.run().unwrap();
    let got = plan.read_blocking(y).unwrap();
    let want = common::matmul_ref(g, n, m, k, &xv, &wv, Some(&bv), false, true);
    common::assert_close("linear", &got, &want, 1e-5, 1e-5);
}
