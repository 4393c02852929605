use std::time::Instant;
use jina_engine::kernels::packed::{self, PackedMatrix, PackedType};
use jina_engine::kernels::MatmulInit;
fn main() {
    let cases = [(1024, 1024, 1024, true), (1024, 1024, 4096, true), (1024, 1024, 1024, false), (1024, 1024, 4096, false)];
    let mut best = vec![f64::INFINITY; cases.len()];
    let mut data: Vec<_> = cases.iter().map(|&(m, k, n, _)| {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        (x, PackedMatrix::pack(&w, n, k, PackedType::Bf16), vec![0f32; m * n])
    }).collect();
    for _round in 0..6 {
        for (i, &(m, k, n, par)) in cases.iter().enumerate() {
            let (x, pw, out) = &mut data[i];
            for _ in 0..2 {
                let t = Instant::now();
                packed::matmul(x, k, m, pw, out, n, MatmulInit::Zero, par);
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
        }
    }
    for (i, &(m, k, n, par)) in cases.iter().enumerate() {
        println!("{m}x{k}x{n} parallel {par}: {:.0} GFLOP/s", 2.0 * (m * k * n) as f64 / best[i] / 1e9);
    }
}
