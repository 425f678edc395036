//! PyTorch's default initialisation, reproducible per model from a seed.

/// A small, fast, seedable generator (SplitMix64): each model draws from its own stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-bound, bound)`.
    pub fn symmetric(&mut self, bound: f64) -> f32 {
        ((self.uniform() * 2.0 - 1.0) * bound) as f32
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// `nn.Linear(in, out)`'s default init: weight kaiming-uniform with a=√5, which is
/// U(±1/√in), and bias U(±1/√in). Returns `(weight [out*in], bias [out])`.
pub fn linear_init(rng: &mut Rng, fan_in: usize, fan_out: usize) -> (Vec<f32>, Vec<f32>) {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let w = (0..fan_in * fan_out).map(|_| rng.symmetric(bound)).collect();
    let b = (0..fan_out).map(|_| rng.symmetric(bound)).collect();
    (w, b)
}
