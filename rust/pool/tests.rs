//! The row kernels against the generic loops (`windows.rs`) and naive definitions, bit for bit,
//! over many shapes: odd sizes, padding, dilation, ceil_mode, 1-D/2-D/3-D, NaN (with distinct
//! payloads), signed zeros, ties and infinities; with and without AVX2; and with arbitrary task
//! splits, which must not change a bit.

use super::*;
use crate::element::Real;
use ndarray::{ArrayD, IxDyn};
use super::plan::Divide;

trait Bits: Real {
    fn bits(self) -> u64;
    fn from_f64_bits(v: f64) -> Self;
    fn nan_with(payload: u32) -> Self;
}

impl Bits for f32 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn from_f64_bits(v: f64) -> Self {
        v as f32
    }
    fn nan_with(payload: u32) -> Self {
        f32::from_bits(0x7fc0_0000 | (payload & 0xffff) | (payload & 1) << 31)
    }
}

impl Bits for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn from_f64_bits(v: f64) -> Self {
        v
    }
    fn nan_with(payload: u32) -> Self {
        f64::from_bits(0x7ff8_0000_0000_0000 | payload as u64 & 0xffff | (payload as u64 & 1) << 63)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Values with many ties (small integers), signed zeros, infinities and NaNs of several
/// payloads, as `special` asks; else distinct-ish floats.
fn values<T: Bits>(shape: &[usize], rng: &mut Rng, special: bool) -> ArrayD<T> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        if !special {
            return T::from_f64_bits((rng.below(1 << 20) as f64) / 1024.0 - 512.0);
        }
        match rng.below(40) {
            0 => T::nan_with(rng.next() as u32),
            1 => T::neg_infinity(),
            2 => T::infinity(),
            3 => T::zero(),
            4 => -T::zero(),
            _ => T::from_f64_bits(rng.below(5) as f64 - 2.0),
        }
    })
}

fn assert_same<T: Bits>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.bits(), y.bits(), "{what}: element {i}: {x:?} vs {y:?}");
    }
}

/// As `assert_same`, except that any NaN equals any NaN: a sum of two NaNs keeps one of their
/// payloads, and which one is the compiler's choice (it may swap an add's operands), so the
/// average kernels, and the max backward where overlapping windows add two NaN gradients at
/// one element, promise NaN but not its payload (a release build of the task-split test gave
/// 0x7fc081fc where the scan order gives 0x7fc094d6). Every other value, -0.0 included, must
/// match bit for bit.
fn assert_same_or_nan<T: Bits>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if !(x.is_nan() && y.is_nan()) {
            assert_eq!(x.bits(), y.bits(), "{what}: element {i}: {x:?} vs {y:?}");
        }
    }
}

/// A pool case: input shape and parameters.
#[derive(Clone, Debug)]
struct Case {
    shape: Vec<usize>,
    params: PoolParams,
}

/// Every small 1-D case (sizes 1-9, kernels 1-4, strides 1-4, all paddings, dilations 1-3 for
/// max, both ceil modes) and the same grid on the width of a 2-D case with a fixed 3x3 s2 p1
/// height: the edges where windows start in padding, end past it, or miss the input.
fn edge_cases(max_kinds: bool) -> Vec<Case> {
    let mut out = vec![];
    for size in 1..10 {
        for k in 1..5 {
            for s in 1..5 {
                for pd in 0..=k / 2 {
                    for d in 1..if max_kinds { 4 } else { 2 } {
                        for ceil in [false, true] {
                            let c1 = Case { shape: vec![1, 2, size], params: p(vec![k], vec![s], vec![pd], vec![d], ceil) };
                            if c1.params.geometry(&c1.shape).is_ok() {
                                out.push(c1);
                            }
                            let c2 = Case {
                                shape: vec![1, 1, 5, size],
                                params: p(vec![3, k], vec![2, s], vec![1, pd], vec![1, d], ceil),
                            };
                            if c2.params.geometry(&c2.shape).is_ok() {
                                out.push(c2);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Many valid cases over 1-D, 2-D and 3-D, drawn from a fixed seed, plus the benchmark's and
/// the edge grid.
fn cases(max_kinds: bool) -> Vec<Case> {
    let mut all = random_cases(max_kinds);
    all.extend(edge_cases(max_kinds));
    all
}

fn random_cases(max_kinds: bool) -> Vec<Case> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = vec![
        Case { shape: vec![2, 3, 16, 16], params: PoolParams::new(vec![2, 2]) },
        // The 2x2 pair kernels: LeNet-5's maps, odd sizes (uncovered last row and column) and
        // rows too short for a vector.
        Case { shape: vec![2, 3, 10, 10], params: PoolParams::new(vec![2, 2]) },
        Case { shape: vec![1, 2, 7, 9], params: PoolParams::new(vec![2, 2]) },
        Case { shape: vec![3, 1, 2, 3], params: PoolParams::new(vec![2, 2]) },
        Case { shape: vec![1, 2, 5, 37], params: PoolParams::new(vec![2, 2]) },
        Case { shape: vec![1, 2, 15, 17], params: p(vec![3, 3], vec![2, 2], vec![1, 1], vec![1, 1], false) },
        Case { shape: vec![1, 2, 15, 17], params: p(vec![3, 3], vec![2, 2], vec![1, 1], vec![1, 1], true) },
        Case { shape: vec![1, 1, 7, 9], params: p(vec![3, 2], vec![1, 1], vec![1, 1], vec![1, 1], false) },
        Case { shape: vec![1, 1, 1, 33], params: p(vec![1, 5], vec![1, 3], vec![0, 2], vec![1, 1], true) },
        Case { shape: vec![2, 2, 40], params: p(vec![4], vec![3], vec![2], vec![1], true) },
    ];
    while out.len() < 300 {
        let dims = 1 + rng.below(3) as usize;
        let mut shape = vec![1 + rng.below(2) as usize, 1 + rng.below(3) as usize];
        let mut kernel = vec![];
        let mut stride = vec![];
        let mut padding = vec![];
        let mut dilation = vec![];
        for _ in 0..dims {
            let k = 1 + rng.below(if dims == 3 { 3 } else { 5 }) as usize;
            let s = 1 + rng.below(4) as usize;
            let pd = rng.below(k as u64 / 2 + 1) as usize;
            let d = if max_kinds { 1 + rng.below(3) as usize } else { 1 };
            let lo = ((k - 1) * d + 1).saturating_sub(2 * pd).max(1);
            let size = lo + rng.below(if dims == 3 { 6 } else { 14 }) as usize;
            kernel.push(k);
            stride.push(s);
            padding.push(pd);
            dilation.push(d);
            shape.push(size);
        }
        let params = p(kernel, stride, padding, dilation, rng.below(2) == 1);
        if params.geometry(&shape).is_ok() {
            out.push(Case { shape, params });
        }
    }
    out
}

fn p(kernel: Vec<usize>, stride: Vec<usize>, padding: Vec<usize>, dilation: Vec<usize>, ceil_mode: bool) -> PoolParams {
    PoolParams { kernel, stride, padding, dilation, ceil_mode, divisor_override: None }
}

fn generic_max<T: Real>(x: &ArrayD<T>, params: &PoolParams) -> (Vec<T>, Vec<i64>) {
    let geo = params.geometry(x.shape()).unwrap();
    let (mut out, mut idx) = (vec![T::zero(); geo.n * geo.c * geo.output_len()], vec![0; geo.n * geo.c * geo.output_len()]);
    windows::max_forward(&geo, x.as_slice().unwrap(), &mut out, &mut idx);
    (out, idx)
}

/// Scatter of `dy` at the generic argmax, outputs in order: the definition of the backward.
fn generic_max_backward<T: Real>(dy: &[T], x: &ArrayD<T>, params: &PoolParams) -> Vec<T> {
    let geo = params.geometry(x.shape()).unwrap();
    let (_, idx) = generic_max(x, params);
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let mut dx = vec![T::zero(); x.len()];
    for plane in 0..geo.n * geo.c {
        for o in 0..out_len {
            dx[plane * in_len + idx[plane * out_len + o] as usize] += dy[plane * out_len + o];
        }
    }
    dx
}

fn check_max<T: Bits>(special: bool) {
    let mut rng = Rng(7);
    for case in cases(true) {
        let x = values::<T>(&case.shape, &mut rng, special);
        let what = format!("{case:?}");
        let (want, want_idx) = generic_max(&x, &case.params);
        let (got, got_idx) = max_pool_forward(x.view(), &case.params).unwrap();
        assert_same(got.as_slice().unwrap(), &want, &what);
        assert_eq!(got_idx.as_slice().unwrap(), &want_idx[..], "{what}: indices");
        let values_only = max_pool_forward_values(x.view(), &case.params).unwrap();
        assert_same(values_only.as_slice().unwrap(), &want, &what);

        let dy = values::<T>(got.shape(), &mut rng, special);
        let want_dx = generic_max_backward(dy.as_slice().unwrap(), &x, &case.params);
        let dx = max_pool_backward(dy.view(), x.view(), &case.params).unwrap();
        assert_same_or_nan(dx.as_slice().unwrap(), &want_dx, &what);
        let dx = max_pool_backward_indices(dy.view(), got_idx.view(), x.shape(), &case.params).unwrap();
        assert_same_or_nan(dx.as_slice().unwrap(), &want_dx, &what);
    }
}

#[test]
fn max_pool_matches_the_definition_f32() {
    check_max::<f32>(false);
    check_max::<f32>(true);
}

#[test]
fn max_pool_matches_the_definition_f64() {
    check_max::<f64>(false);
    check_max::<f64>(true);
}

fn check_avg<T: Bits>(special: bool) {
    let mut rng = Rng(11);
    for case in cases(false) {
        for (cip, over) in [(true, None), (false, None), (true, Some(3)), (false, Some(-7))] {
            let x = values::<T>(&case.shape, &mut rng, special);
            let what = format!("{case:?} count_include_pad={cip} divisor_override={over:?}");
            let params = PoolParams { divisor_override: over, ..case.params.clone() };
            let geo = params.geometry(x.shape()).unwrap();
            let div = Divide { count_include_pad: cip, divisor_override: over };
            let mut want = vec![T::zero(); geo.n * geo.c * geo.output_len()];
            windows::avg_forward(&geo, x.as_slice().unwrap(), &mut want, div);
            let got = avg_pool_forward(x.view(), &params, cip).unwrap();
            assert_same_or_nan(got.as_slice().unwrap(), &want, &what);

            let dy = values::<T>(got.shape(), &mut rng, special);
            let mut want_dx = vec![T::zero(); x.len()];
            windows::avg_backward(&geo, dy.as_slice().unwrap(), &mut want_dx, div);
            let dx = avg_pool_backward(dy.view(), x.view(), &params, cip).unwrap();
            assert_same_or_nan(dx.as_slice().unwrap(), &want_dx, &what);
        }
    }
}

#[test]
fn avg_pool_matches_the_definition_f32() {
    check_avg::<f32>(false);
    check_avg::<f32>(true);
}

#[test]
fn avg_pool_matches_the_definition_f64() {
    check_avg::<f64>(false);
    check_avg::<f64>(true);
}

/// The adaptive backward from the definition (outputs in order, every tap of each window), and
/// the `grad_output` it used.
fn naive_adaptive_backward(x: &ArrayD<f64>, out: &[usize]) -> (Vec<f64>, ArrayD<f64>) {
    let geo = adaptive_geometry(x.shape(), &out.iter().map(|&o| Some(o)).collect::<Vec<_>>()).unwrap();
    let [d, h, w] = geo.input;
    let [od, oh, ow] = geo.output;
    let mut dy = vec![];
    let mut dx = vec![0.0; x.len()];
    for plane in 0..geo.n * geo.c {
        for oz in 0..od {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (za, zb) = crate::params::adaptive_window(oz, od, d);
                    let (ya, yb) = crate::params::adaptive_window(oy, oh, h);
                    let (xa, xb) = crate::params::adaptive_window(ox, ow, w);
                    let count = ((zb - za) * (yb - ya) * (xb - xa)) as f64;
                    let g = ((plane + oz * 3 + oy * 5 + ox * 7) % 13) as f64 - 6.5;
                    dy.push(g);
                    for z in za..zb {
                        for yy in ya..yb {
                            for xx in xa..xb {
                                dx[plane * d * h * w + (z * h + yy) * w + xx] += g / count;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, ArrayD::from_shape_vec(IxDyn(&geo.output_shape()), dy).unwrap())
}

#[test]
fn adaptive_pool_matches_the_definition() {
    let mut rng = Rng(5);
    let shapes: &[(&[usize], &[usize])] = &[
        (&[2, 3, 7, 9], &[3, 4]),
        (&[1, 2, 5, 5], &[1, 1]),
        (&[1, 1, 4, 6], &[4, 6]),
        (&[2, 2, 13], &[5]),
        (&[1, 2, 5, 6, 7], &[2, 3, 4]),
        (&[1, 1, 3, 10], &[7, 3]),
    ];
    for &(shape, size) in shapes {
        let x = values::<f64>(shape, &mut rng, false);
        let sz: Vec<Option<usize>> = size.iter().map(|&o| Some(o)).collect();
        let got = adaptive_avg_pool_forward(x.view(), &sz).unwrap();
        // Expected forward: the definition's sums, compared with a tolerance (the kernel sums
        // columns first).
        let geo = adaptive_geometry(shape, &sz).unwrap();
        let [d, h, w] = geo.input;
        let [od, oh, ow] = geo.output;
        let xs = x.as_slice().unwrap();
        let mut k = 0;
        for plane in 0..geo.n * geo.c {
            for oz in 0..od {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (za, zb) = crate::params::adaptive_window(oz, od, d);
                        let (ya, yb) = crate::params::adaptive_window(oy, oh, h);
                        let (xa, xb) = crate::params::adaptive_window(ox, ow, w);
                        let mut sum = 0.0;
                        for z in za..zb {
                            for yy in ya..yb {
                                for xx in xa..xb {
                                    sum += xs[plane * d * h * w + (z * h + yy) * w + xx];
                                }
                            }
                        }
                        let want = sum / ((zb - za) * (yb - ya) * (xb - xa)) as f64;
                        let g = got.as_slice().unwrap()[k];
                        assert!((g - want).abs() <= 1e-12 * (1.0 + want.abs()), "{shape:?} {size:?} output {k}: {g} vs {want}");
                        k += 1;
                    }
                }
            }
        }
        // Backward: the definition's order exactly (outputs in order), so bit for bit.
        let (want_dx, dy) = naive_adaptive_backward(&x, size);
        let dx = adaptive_avg_pool_backward(dy.view(), x.view()).unwrap();
        assert_same(dx.as_slice().unwrap(), &want_dx, &format!("{shape:?} {size:?}"));
    }
}

/// The task functions with every block size and every instruction set give the same bits.
#[test]
fn task_splits_and_instruction_sets_do_not_change_results() {
    let mut rng = Rng(99);
    let levels = simd::levels();
    for mut case in cases(true).into_iter().step_by(7) {
        case.shape[0] = 1;
        case.shape[1] = 1;
        let x = values::<f32>(&case.shape, &mut rng, true);
        let geo = case.params.geometry(x.shape()).unwrap();
        let (in_len, out_len) = (geo.input_len(), geo.output_len());
        let xs = x.as_slice().unwrap();
        let (want, want_idx) = generic_max(&x, &case.params);
        let dy = values::<f32>(&geo.output_shape(), &mut rng, true);
        let want_dx = generic_max_backward(dy.as_slice().unwrap(), &x, &case.params);
        let dy = dy.as_slice().unwrap();
        let plan = max::MaxPlan::new(&geo);
        let (rows_out, rows_in, wo, w) = (geo.output[0] * geo.output[1], geo.input[0] * geo.input[1], geo.output[2], geo.input[2]);
        for &level in &levels {
            for rpt in 1..=rows_out.min(4) {
                let mut out = vec![0.0f32; out_len];
                let mut idx = vec![0i64; out_len];
                for (b, (o, i)) in out.chunks_mut(rpt * wo).zip(idx.chunks_mut(rpt * wo)).enumerate() {
                    max::forward_task::<f32, true>(level, &plan, xs, b * rpt, o, i);
                }
                assert_same(&out, &want[..out_len], &format!("{case:?} level={level:?} rows={rpt}"));
                assert_eq!(idx, want_idx[..out_len], "{case:?} level={level:?} rows={rpt}");
            }
            for rpt in 1..=rows_in.min(5) {
                let mut dx = vec![0.0f32; in_len];
                for (b, d) in dx.chunks_mut(rpt * w).enumerate() {
                    max::backward_task::<f32>(level, &plan, xs, dy, b * rpt, d);
                }
                assert_same_or_nan(&dx, &want_dx[..in_len], &format!("{case:?} backward level={level:?} rows={rpt}"));
            }
        }
    }
}

/// The 2x2 pair kernels built for every instruction set give the generic loops' bits.
#[test]
fn pair_kernels_match_at_every_level() {
    let mut rng = Rng(17);
    let params = PoolParams::new(vec![2, 2]);
    for shape in [[1, 1, 6, 40], [1, 1, 9, 33], [1, 1, 4, 2]] {
        let x = values::<f32>(&shape, &mut rng, true);
        let geo = params.geometry(x.shape()).unwrap();
        let (w, wo) = (geo.input[2], geo.output[2]);
        let (want, want_idx) = generic_max(&x, &params);
        let dy = values::<f32>(&geo.output_shape(), &mut rng, true);
        let want_dx = generic_max_backward(dy.as_slice().unwrap(), &x, &params);
        let xs = x.as_slice().unwrap();
        for &level in &simd::levels() {
            let (mut out, mut vals, mut idx) = (vec![0.0f32; want.len()], vec![0.0f32; want.len()], vec![0i64; want.len()]);
            let mut dx = vec![0.0f32; xs.len()];
            for oy in 0..geo.output[1] {
                let (r0, r1) = (&xs[2 * oy * w..][..w], &xs[(2 * oy + 1) * w..][..w]);
                let o = oy * wo..(oy + 1) * wo;
                max::pair_row(level, r0, r1, &mut out[o.clone()], &mut idx[o.clone()], (2 * oy * w) as i64, w as i64);
                max::pair_row_values(level, r0, r1, &mut vals[o.clone()]);
                let (d0, d1) = dx[2 * oy * w..][..2 * w].split_at_mut(w);
                max::pair_grad_row(level, r0, r1, &dy.as_slice().unwrap()[o], d0, d1);
            }
            let what = format!("{shape:?} level={level:?}");
            assert_same(&out, &want, &what);
            assert_same(&vals, &want, &what);
            assert_eq!(idx, want_idx, "{what}");
            assert_same(&dx, &want_dx, &what);
        }
    }
}

/// A small call (run on the calling thread), many planes (split by plane), one large plane
/// (split by rows) and the 2x2 pair kernel give the same bits on any number of threads.
#[test]
fn thread_count_does_not_change_results() {
    let mut rng = Rng(3);
    let k3 = p(vec![3, 3], vec![2, 2], vec![1, 1], vec![1, 1], true);
    let before = crate::parallel::get_num_threads();
    let pairs = PoolParams::new(vec![2, 2]);
    for (shape, params) in [([1, 3, 37, 41], &k3), ([4, 16, 33, 35], &k3), ([1, 1, 301, 203], &k3), ([8, 16, 28, 28], &pairs)] {
        let x = values::<f32>(&shape, &mut rng, true);
        let mut results = vec![];
        for threads in [1, 2, 3] {
            crate::parallel::set_num_threads(threads).unwrap();
            let (y, i) = max_pool_forward(x.view(), params).unwrap();
            let v = max_pool_forward_values(x.view(), params).unwrap();
            let dx = max_pool_backward(y.view(), x.view(), params).unwrap();
            let di = max_pool_backward_indices(y.view(), i.view(), x.shape(), params).unwrap();
            let a = avg_pool_forward(x.view(), params, false).unwrap();
            let da = avg_pool_backward(a.view(), x.view(), params, false).unwrap();
            let g = adaptive_avg_pool_forward(x.view(), &[Some(5), Some(7)]).unwrap();
            let dg = adaptive_avg_pool_backward(g.view(), x.view()).unwrap();
            results.push(([y, v, dx, di, a, da, g, dg], i));
        }
        let names =
            ["max", "max values", "max backward", "max backward from indices", "avg", "avg backward", "adaptive", "adaptive backward"];
        for (r, i) in &results[1..] {
            for (j, name) in names.iter().enumerate() {
                assert_same(r[j].as_slice().unwrap(), results[0].0[j].as_slice().unwrap(), &format!("{shape:?} {name}"));
            }
            assert_eq!(*i, results[0].1, "{shape:?} indices");
        }
    }
    crate::parallel::set_num_threads(before).unwrap();
}

fn plane(h: usize, w: usize) -> ArrayD<f64> {
    ArrayD::from_shape_fn(IxDyn(&[1, 1, h, w]), |i| ((i[2] * 7 + i[3] * 3) % 11) as f64)
}

#[test]
fn max_pool_2x2_and_indices() {
    let x = plane(4, 4);
    let (out, idx) = max_pool_forward(x.view(), &PoolParams::new(vec![2, 2])).unwrap();
    for oy in 0..2 {
        for ox in 0..2 {
            let mut best = (f64::NEG_INFINITY, 0);
            for y in 2 * oy..2 * oy + 2 {
                for xx in 2 * ox..2 * ox + 2 {
                    if x[[0, 0, y, xx]] > best.0 {
                        best = (x[[0, 0, y, xx]], y * 4 + xx);
                    }
                }
            }
            assert_eq!(out[[0, 0, oy, ox]], best.0);
            assert_eq!(idx[[0, 0, oy, ox]], best.1 as i64);
        }
    }
}

#[test]
fn max_pool_propagates_nan_and_keeps_the_later_one() {
    let mut x = plane(4, 4);
    x[[0, 0, 1, 1]] = f64::NAN;
    let (out, idx) = max_pool_forward(x.view(), &PoolParams::new(vec![2, 2])).unwrap();
    assert!(out[[0, 0, 0, 0]].is_nan());
    assert_eq!(idx[[0, 0, 0, 0]], 5);
    assert!(!out[[0, 0, 1, 1]].is_nan());
    // Two NaNs in one window: the later in scan order (row-major) wins, payload included.
    let mut x = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 2, 2]));
    x[[0, 0, 0, 1]] = f32::from_bits(0x7fc0_0001);
    x[[0, 0, 1, 0]] = f32::from_bits(0x7fc0_0002);
    let (out, idx) = max_pool_forward(x.view(), &PoolParams::new(vec![2, 2])).unwrap();
    assert_eq!(out[[0, 0, 0, 0]].to_bits(), 0x7fc0_0002);
    assert_eq!(idx[[0, 0, 0, 0]], 2);
    assert_eq!(max_pool_forward_values(x.view(), &PoolParams::new(vec![2, 2])).unwrap()[[0, 0, 0, 0]].to_bits(), 0x7fc0_0002);
}

#[test]
fn max_pool_first_of_equal_maxima_wins() {
    // [[1, 5], [5, 1]]: row-major scan finds (0, 1) first; a column-first scan would say (1, 0).
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 2]), vec![1.0f32, 5.0, 5.0, 1.0]).unwrap();
    let (_, idx) = max_pool_forward(x.view(), &PoolParams::new(vec![2, 2])).unwrap();
    assert_eq!(idx[[0, 0, 0, 0]], 1);
    // +0 then -0: the first zero (+0) stays.
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 2]), vec![-1.0f32, 0.0, -0.0, -1.0]).unwrap();
    let y = max_pool_forward_values(x.view(), &PoolParams::new(vec![2, 2])).unwrap();
    assert!(y[[0, 0, 0, 0]].is_sign_positive());
}

#[test]
fn bad_indices_are_errors() {
    let x = plane(4, 4);
    let params = PoolParams::new(vec![2, 2]);
    let (y, mut idx) = max_pool_forward(x.view(), &params).unwrap();
    idx[[0, 0, 1, 1]] = 16;
    assert_eq!(max_pool_backward_indices(y.view(), idx.view(), x.shape(), &params).unwrap_err().arg(), "indices");
    idx[[0, 0, 1, 1]] = -1;
    assert_eq!(max_pool_backward_indices(y.view(), idx.view(), x.shape(), &params).unwrap_err().arg(), "indices");
    let short = idx.slice_move(ndarray::s![.., .., ..1, ..]).into_dyn();
    assert_eq!(max_pool_backward_indices(y.view(), short.view(), x.shape(), &params).unwrap_err().arg(), "indices");
}

/// A kernel far larger than the input, with half of it as padding, is valid (as in PyTorch):
/// the generic loops take it, quickly and without huge buffers, with the same results.
#[test]
fn huge_kernels_and_strides_take_the_generic_loops() {
    let mut rng = Rng(21);
    let x = values::<f32>(&[1, 2, 3, 4, 5], &mut rng, true);
    let big = 1usize << 40;
    for params in [
        p(vec![big, 3, big], vec![1, 1, 1], vec![big / 2, 1, big / 2], vec![1, 1, 1], false),
        p(vec![2, 2, 2], vec![big, big, big], vec![1, 1, 1], vec![1, 1, 1], true),
        p(vec![3, 4_000_001, 3], vec![2, 1, 2], vec![1, 2_000_000, 1], vec![1, 1, 1], true),
    ] {
        let geo = params.geometry(x.shape()).unwrap();
        assert!(!plan::rows_fit(&geo) || geo.kernel[1] > 1000, "{params:?}");
        let (y, idx) = max_pool_forward(x.view(), &params).unwrap();
        let (want, want_idx) = generic_max(&x, &params);
        assert_same(y.as_slice().unwrap(), &want, "huge max");
        assert_eq!(idx.as_slice().unwrap(), &want_idx[..]);
        assert_same(max_pool_forward_values(x.view(), &params).unwrap().as_slice().unwrap(), &want, "huge max values");
        let dy = values::<f32>(y.shape(), &mut rng, false);
        let dx = max_pool_backward(dy.view(), x.view(), &params).unwrap();
        assert_same_or_nan(dx.as_slice().unwrap(), &generic_max_backward(dy.as_slice().unwrap(), &x, &params), "huge max backward");
        for cip in [true, false] {
            let mut want = vec![0.0f32; y.len()];
            windows::avg_forward(&geo, x.as_slice().unwrap(), &mut want, Divide { count_include_pad: cip, divisor_override: None });
            assert_same(avg_pool_forward(x.view(), &params, cip).unwrap().as_slice().unwrap(), &want, "huge avg");
            let mut want_dx = vec![0.0f32; x.len()];
            windows::avg_backward(&geo, dy.as_slice().unwrap(), &mut want_dx, Divide { count_include_pad: cip, divisor_override: None });
            assert_same(avg_pool_backward(dy.view(), x.view(), &params, cip).unwrap().as_slice().unwrap(), &want_dx, "huge avg backward");
        }
    }
}

#[test]
fn empty_spatial_input_is_an_error() {
    let x = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 0, 4]));
    let mut params = PoolParams::new(vec![2, 2]);
    params.padding = vec![1, 1];
    assert_eq!(max_pool_forward(x.view(), &params).unwrap_err().arg(), "input");
    assert_eq!(avg_pool_forward(x.view(), &params, true).unwrap_err().arg(), "input");
}

#[test]
fn empty_batch_gives_empty_results() {
    let x = ArrayD::<f32>::zeros(IxDyn(&[0, 3, 8, 8]));
    let params = PoolParams::new(vec![2, 2]);
    assert_eq!(max_pool_forward(x.view(), &params).unwrap().0.shape(), &[0, 3, 4, 4]);
    assert_eq!(max_pool_forward_values(x.view(), &params).unwrap().shape(), &[0, 3, 4, 4]);
    let dy = ArrayD::<f32>::zeros(IxDyn(&[0, 3, 4, 4]));
    assert_eq!(max_pool_backward(dy.view(), x.view(), &params).unwrap().shape(), &[0, 3, 8, 8]);
    assert_eq!(avg_pool_backward(dy.view(), x.view(), &params, true).unwrap().shape(), &[0, 3, 8, 8]);
}

#[test]
fn avg_pool_divisors() {
    let x = ArrayD::<f64>::ones(IxDyn(&[1, 1, 3, 3]));
    let mut p = PoolParams::new(vec![2, 2]);
    p.padding = vec![1, 1];
    // Corner window covers 1 input element and 3 padding zeros.
    assert_eq!(avg_pool_forward(x.view(), &p, true).unwrap()[[0, 0, 0, 0]], 0.25);
    assert_eq!(avg_pool_forward(x.view(), &p, false).unwrap()[[0, 0, 0, 0]], 1.0);
}

#[test]
fn divisor_override_replaces_every_divisor() {
    let x = ArrayD::<f64>::ones(IxDyn(&[1, 1, 3, 3]));
    let mut p = PoolParams::new(vec![2, 2]);
    p.padding = vec![1, 1];
    // The 2x2 windows (stride 2) hold 1, 2, 2 and 4 ones, whatever count_include_pad says.
    for cip in [true, false] {
        p.divisor_override = Some(-4);
        let y = avg_pool_forward(x.view(), &p, cip).unwrap();
        assert_eq!(y.as_slice().unwrap(), &[-0.25, -0.5, -0.5, -1.0]);
        p.divisor_override = Some(2);
        let dx = avg_pool_backward(ArrayD::ones(y.raw_dim()).view(), x.view(), &p, cip).unwrap();
        assert!(dx.iter().all(|&g| g == 0.5), "each input is in one window: {dx:?}");
    }
    p.divisor_override = Some(0);
    assert_eq!(avg_pool_forward(x.view(), &p, true).unwrap_err().arg(), "divisor_override");
    let dy = ArrayD::<f64>::ones(IxDyn(&[1, 1, 2, 2]));
    assert_eq!(avg_pool_backward(dy.view(), x.view(), &p, true).unwrap_err().arg(), "divisor_override");
    // A max pool has no divisor: an override there is a mistake, not ignored.
    p.divisor_override = Some(3);
    assert_eq!(max_pool_forward(x.view(), &p).unwrap_err().arg(), "divisor_override");
}

#[test]
fn adaptive_average_of_whole_plane() {
    let x = plane(5, 7);
    let out = adaptive_avg_pool_forward(x.view(), &[Some(1), Some(1)]).unwrap();
    assert!((out[[0, 0, 0, 0]] - x.mean().unwrap()).abs() < 1e-12);
}

#[test]
fn non_contiguous_inputs_give_the_same_results() {
    let mut rng = Rng(17);
    let x = values::<f32>(&[2, 3, 11, 13], &mut rng, true);
    let t = x.view().permuted_axes(IxDyn(&[1, 0, 3, 2])).to_owned();
    let tv = t.view().permuted_axes(IxDyn(&[1, 0, 3, 2]));
    let params = p(vec![3, 2], vec![2, 1], vec![1, 1], vec![1, 2], true);
    let (a, ai) = max_pool_forward(x.view(), &params).unwrap();
    let (b, bi) = max_pool_forward(tv, &params).unwrap();
    assert_same(a.as_slice().unwrap(), b.as_slice().unwrap(), "strided input");
    assert_eq!(ai, bi);
}

/// The divisor of a window clipped to a padding of half a huge kernel: each count is near
/// `usize::MAX` (`size + 2p` wrapped before) and their product far past it (it saturated at
/// 2^64 before). The references are the exact values, rounded once.
#[test]
fn huge_windows_divide_by_their_exact_size() {
    let max = usize::MAX;
    // 1-D: k = 2^64 - 1 fits the padded input (4 + 2^64 - 2): one window, four ones in it.
    let x = ArrayD::<f64>::ones(IxDyn(&[1, 1, 4]));
    let params = p(vec![max], vec![max], vec![max / 2], vec![1], false);
    let y = avg_pool_forward(x.view(), &params, true).unwrap();
    assert_eq!(y.as_slice().unwrap(), &[4.0 / 18446744073709551615.0]);
    let dx = avg_pool_backward(y.view(), x.view(), &params, true).unwrap();
    assert!(dx.iter().all(|&g| g == y[[0, 0, 0]] / 18446744073709551615.0), "{dx:?}");
    // 3-D: 2^30 per dimension, 2^90 in all: 64 / 2^90 exactly.
    let x = ArrayD::<f64>::ones(IxDyn(&[1, 1, 4, 4, 4]));
    let k = 1usize << 30;
    let params = p(vec![k; 3], vec![k; 3], vec![k / 2; 3], vec![1; 3], false);
    let want = 64.0 * 2f64.powi(-90);
    assert_eq!(avg_pool_forward(x.view(), &params, true).unwrap().as_slice().unwrap(), &[want]);
    let xf = x.mapv(|v| v as f32);
    assert_eq!(avg_pool_forward(xf.view(), &params, true).unwrap().as_slice().unwrap(), &[want as f32]);
    // Three counts of 2^64 - 1: past u128, a float product, 64 / 2^192 (0 in float32, whose
    // smallest subnormal is 2^-149).
    let params = p(vec![max; 3], vec![max; 3], vec![max / 2; 3], vec![1; 3], false);
    assert_eq!(avg_pool_forward(x.view(), &params, true).unwrap().as_slice().unwrap(), &[64.0 * 2f64.powi(-192)]);
    assert_eq!(avg_pool_forward(xf.view(), &params, true).unwrap().as_slice().unwrap(), &[0.0]);
    // Without the padding in the divisor, the count is the four (64) input elements.
    assert_eq!(avg_pool_forward(x.view(), &params, false).unwrap().as_slice().unwrap(), &[1.0]);
}

/// An output whose element count overflows is an error naming the argument that made it, also
/// for an empty batch (nothing to allocate, but no array can have that shape).
#[test]
fn outputs_too_large_to_exist_are_errors() {
    let x = ArrayD::<f32>::zeros(IxDyn(&[0, 1, 4, 4]));
    let huge = 1usize << 62;
    assert_eq!(adaptive_avg_pool_forward(x.view(), &[Some(huge), Some(huge)]).unwrap_err().arg(), "output_size");
    let x1 = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 4]));
    assert_eq!(adaptive_avg_pool_forward(x1.view(), &[Some(1 << 63)]).unwrap_err().arg(), "output_size");
    // Windows of an output far larger than the input: i * size passes usize::MAX.
    assert_eq!(crate::params::adaptive_window(huge - 1, huge, 1 << 10), ((1 << 10) - 1, 1 << 10));
}
