//! End to end on the embedded MNIST: a short SGD run teaches every model of a batch.

mod common;

use modelbatch::data::{Mnist, MnistSplit};
use modelbatch::train::{MlpClassifier, Normalize, Shuffler};
use modelbatch::{PerModel, Sgd};

fn head(split: &MnistSplit, n: usize) -> MnistSplit {
    let px = split.rows * split.cols;
    MnistSplit {
        images: split.images[..n * px].to_vec(),
        labels: split.labels[..n].to_vec(),
        n,
        rows: split.rows,
        cols: split.cols,
    }
}

#[test]
fn every_model_learns_mnist() {
    let gpu = gpu_or_skip!();
    let data = Mnist::load(Mnist::default_dir()).unwrap();
    let test = head(&data.test, 2000);
    let (g, n, steps) = (5, 32, 200);
    let sgd = Sgd::new(PerModel::log_space(0.01, 0.1, g)).momentum(0.5);
    let mut clf = MlpClassifier::new(gpu, g, &[784, 32, 10], n, 500, &sgd, 7).unwrap();
    let norm = Normalize::default();
    let before = pollster::block_on(clf.evaluate(&test, norm)).unwrap();
    let mut shuffler = Shuffler::new(g, data.train.n, 7);
    shuffler.shuffle(0);
    for s in 0..steps {
        clf.step(&data.train, &shuffler.batches(s, n), norm).unwrap();
    }
    let after = pollster::block_on(clf.evaluate(&test, norm)).unwrap();
    assert_eq!(after.samples, 2000);
    for m in 0..g {
        let acc = after.top1[m] as f64 / 2000.0;
        assert!(acc > 0.8, "model {m}: test accuracy {acc} after {steps} steps");
        assert!(after.top5[m] >= after.top1[m]);
        assert!(after.loss[m] < 0.6 * before.loss[m], "model {m}: loss {} -> {}", before.loss[m], after.loss[m]);
        // Models start from different seeds and learning rates: they differ.
        if m > 0 {
            assert_ne!(after.loss[m], after.loss[m - 1]);
        }
    }
}
