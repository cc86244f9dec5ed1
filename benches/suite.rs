//! Criterion benches over the benchmark suite (`benches/suite.json`, a copy of the project's
//! shared suite): every convolution entry forward and backward, every pool entry forward and
//! backward, float32, on rconv's pool (set RCONV_NUM_THREADS to pick the thread count). Max
//! pools also time the forward with indices and the backward from stored indices.
//!
//! Each entry's result is checked before it is timed: a sample of output elements is recomputed
//! directly from the definition in f64, and a wrong kernel fails the bench run.

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{ArrayD, IxDyn};
use rconv::pool::{max_pool_backward_indices, max_pool_forward_values};
use rconv::{conv_backward, conv_forward, max_pool_backward, max_pool_forward, avg_pool_backward, avg_pool_forward};
use rconv::{ConvParams, Padding, PaddingMode, PoolParams};
use serde_json::Value;
use std::hint::black_box;
use std::time::Duration;

fn suite() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/suite.json")).expect("benches/suite.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn usizes(v: &Value) -> Vec<usize> {
    match v {
        Value::Array(a) => a.iter().map(|x| x.as_u64().expect("int") as usize).collect(),
        other => vec![other.as_u64().expect("int") as usize],
    }
}

/// Deterministic values in [-1, 1).
fn filled(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    })
}

/// The flat positions of `count` output elements spread over the whole output.
fn sample_positions(len: usize, count: usize) -> Vec<usize> {
    (0..count).map(|i| (i * 7919 + i * i * 104_729) % len).collect()
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

/// One output element of a zero-padded convolution, from the definition, in f64.
fn conv_at(x: &ArrayD<f32>, w: &ArrayD<f32>, geo: &rconv::ConvGeometry, at: &[usize]) -> f64 {
    let dims = geo.dims;
    let (n, k) = (at[0], at[1]);
    let (cg, kg) = (geo.c_in_per_group(), geo.c_out_per_group());
    let g = k / kg;
    let kshape = &w.shape()[2..];
    let kvol: usize = kshape.iter().product();
    let mut sum = 0.0f64;
    for c in 0..cg {
        for kf in 0..kvol {
            let kidx = unravel(kf, kshape);
            let mut xi = vec![n, g * cg + c];
            let mut inside = true;
            for d in 0..dims {
                let s = 3 - dims + d;
                let pos = (at[2 + d] * geo.stride[s] + kidx[d] * geo.dilation[s]) as isize - geo.pad_lo[s] as isize;
                inside &= pos >= 0 && (pos as usize) < geo.input[s];
                xi.push(pos.max(0) as usize);
            }
            if inside {
                let mut wi = vec![k, c];
                wi.extend_from_slice(&kidx);
                sum += x[IxDyn(&xi)] as f64 * w[IxDyn(&wi)] as f64;
            }
        }
    }
    sum
}

fn check_conv(name: &str, x: &ArrayD<f32>, w: &ArrayD<f32>, params: &ConvParams) {
    let geo = params.geometry(x.shape(), w.shape()).unwrap();
    let y = conv_forward(x.view(), w.view(), None, params).unwrap();
    let flat = y.as_slice().unwrap();
    for p in sample_positions(flat.len(), 64) {
        let want = conv_at(x, w, &geo, &unravel(p, y.shape()));
        let got = flat[p] as f64;
        assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{name}: output {p} is {got}, expected {want}");
    }
}

fn check_max_pool(name: &str, x: &ArrayD<f32>, params: &PoolParams) {
    let geo = params.geometry(x.shape()).unwrap();
    let (y, idx) = max_pool_forward(x.view(), params).unwrap();
    let (flat, flat_idx) = (y.as_slice().unwrap(), idx.as_slice().unwrap());
    let plane = geo.input_len();
    let xs = x.as_slice().unwrap();
    for p in sample_positions(flat.len(), 256) {
        let at = unravel(p, y.shape());
        let (oy, ox) = (at[2], at[3]);
        let base = (at[0] * geo.c + at[1]) * plane;
        let mut best = f32::NEG_INFINITY;
        for ky in 0..geo.kernel[1] {
            for kx in 0..geo.kernel[2] {
                let iy = (oy * geo.stride[1] + ky) as isize - geo.pad[1] as isize;
                let ix = (ox * geo.stride[2] + kx) as isize - geo.pad[2] as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < geo.input[1] && (ix as usize) < geo.input[2] {
                    best = best.max(xs[base + iy as usize * geo.input[2] + ix as usize]);
                }
            }
        }
        assert_eq!(flat[p], best, "{name}: output {p}");
        assert_eq!(xs[base + flat_idx[p] as usize], best, "{name}: index {p}");
    }
    let values = max_pool_forward_values(x.view(), params).unwrap();
    assert!(values.iter().zip(flat).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: values-only forward differs");
    // Backward: recomputed argmax and stored indices agree, and every gradient lands somewhere.
    let dy = filled(y.shape(), 5);
    let dx = max_pool_backward(dy.view(), x.view(), params).unwrap();
    let dx_idx = max_pool_backward_indices(dy.view(), idx.view(), x.shape(), params).unwrap();
    assert!(dx.iter().zip(dx_idx.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: backward from indices differs");
    let (sum_dx, sum_dy) = (dx.iter().map(|&v| v as f64).sum::<f64>(), dy.iter().map(|&v| v as f64).sum::<f64>());
    assert!((sum_dx - sum_dy).abs() <= 1e-3 * (1.0 + sum_dy.abs()), "{name}: backward sums {sum_dx} vs {sum_dy}");
}

fn check_avg_pool(name: &str, x: &ArrayD<f32>, params: &PoolParams) {
    let geo = params.geometry(x.shape()).unwrap();
    let y = avg_pool_forward(x.view(), params, true).unwrap();
    let flat = y.as_slice().unwrap();
    let (plane, xs) = (geo.input_len(), x.as_slice().unwrap());
    for p in sample_positions(flat.len(), 256) {
        let at = unravel(p, y.shape());
        let base = (at[0] * geo.c + at[1]) * plane;
        let mut sum = 0.0f64;
        for ky in 0..geo.kernel[1] {
            for kx in 0..geo.kernel[2] {
                let iy = (at[2] * geo.stride[1] + ky) as isize - geo.pad[1] as isize;
                let ix = (at[3] * geo.stride[2] + kx) as isize - geo.pad[2] as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < geo.input[1] && (ix as usize) < geo.input[2] {
                    sum += xs[base + iy as usize * geo.input[2] + ix as usize] as f64;
                }
            }
        }
        // count_include_pad: windows here never overhang the padding.
        let want = sum / (geo.kernel[1] * geo.kernel[2]) as f64;
        assert!((flat[p] as f64 - want).abs() <= 1e-5, "{name}: output {p} is {}, expected {want}", flat[p]);
    }
    let dy = filled(y.shape(), 5);
    let dx = avg_pool_backward(dy.view(), x.view(), params, true).unwrap();
    let (sum_dx, sum_dy) = (dx.iter().map(|&v| v as f64).sum::<f64>(), dy.iter().map(|&v| v as f64).sum::<f64>());
    assert!((sum_dx - sum_dy).abs() <= 1e-3 * (1.0 + sum_dy.abs()), "{name}: backward sums {sum_dx} vs {sum_dy}");
}

fn conv_benches(c: &mut Criterion) {
    let suite = suite();
    for e in suite["conv"].as_array().expect("conv entries") {
        let name = e["name"].as_str().unwrap();
        let dims = e["dims"].as_u64().unwrap() as usize;
        let (n, ch, k, groups) = (e["N"].as_u64().unwrap() as usize, e["C"].as_u64().unwrap() as usize, e["K"].as_u64().unwrap() as usize, e["groups"].as_u64().unwrap() as usize);
        let mut xs = vec![n, ch];
        xs.extend(usizes(&e["spatial"]));
        let mut ws = vec![k, ch / groups];
        ws.extend(usizes(&e["kernel"]));
        let params = ConvParams {
            stride: vec![e["stride"].as_u64().unwrap() as usize; dims],
            padding: Padding::Explicit(vec![e["padding"].as_u64().unwrap() as usize; dims]),
            dilation: vec![1; dims],
            groups,
            padding_mode: PaddingMode::Zeros,
        };
        let x = filled(&xs, 1);
        let w = filled(&ws, 2);
        check_conv(name, &x, &w, &params);
        let y = conv_forward(x.view(), w.view(), None, &params).unwrap();
        let dy = filled(y.shape(), 3);
        let mut group = c.benchmark_group(name);
        group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        group.bench_function("forward", |b| b.iter(|| black_box(conv_forward(x.view(), w.view(), None, &params).unwrap())));
        group.bench_function("backward", |b| b.iter(|| black_box(conv_backward(dy.view(), x.view(), w.view(), &params).unwrap())));
        group.finish();
    }
}

fn pool_benches(c: &mut Criterion) {
    let suite = suite();
    for e in suite["pool"].as_array().expect("pool entries") {
        let name = e["name"].as_str().unwrap();
        let shape = usizes(&e["shape"]);
        let dims = shape.len() - 2;
        let mut params = PoolParams::new(vec![e["kernel"].as_u64().unwrap() as usize; dims]);
        params.stride = vec![e["stride"].as_u64().unwrap() as usize; dims];
        params.padding = vec![e["padding"].as_u64().unwrap() as usize; dims];
        let x = filled(&shape, 4);
        let is_max = e["op"].as_str() == Some("max");
        if is_max {
            check_max_pool(name, &x, &params);
        } else {
            check_avg_pool(name, &x, &params);
        }
        let (y, idx) = if is_max {
            let (y, idx) = max_pool_forward(x.view(), &params).unwrap();
            (y, Some(idx))
        } else {
            (avg_pool_forward(x.view(), &params, true).unwrap(), None)
        };
        let dy = filled(y.shape(), 5);
        let mut group = c.benchmark_group(name);
        group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        if let Some(idx) = &idx {
            // `forward` is what `max_pool2d(x, ...)` runs (no indices); `forward_indices` is
            // `return_indices=True`; `backward` recomputes the argmax, `backward_indices` uses the
            // forward's.
            group.bench_function("forward", |b| b.iter(|| black_box(max_pool_forward_values(x.view(), &params).unwrap())));
            group.bench_function("forward_indices", |b| b.iter(|| black_box(max_pool_forward(x.view(), &params).unwrap())));
            group.bench_function("backward", |b| b.iter(|| black_box(max_pool_backward(dy.view(), x.view(), &params).unwrap())));
            group.bench_function("backward_indices", |b| {
                b.iter(|| black_box(max_pool_backward_indices(dy.view(), idx.view(), x.shape(), &params).unwrap()))
            });
        } else {
            group.bench_function("forward", |b| b.iter(|| black_box(avg_pool_forward(x.view(), &params, true).unwrap())));
            group.bench_function("backward", |b| b.iter(|| black_box(avg_pool_backward(dy.view(), x.view(), &params, true).unwrap())));
        }
        group.finish();
    }
}

criterion_group!(benches, conv_benches, pool_benches);
criterion_main!(benches);
