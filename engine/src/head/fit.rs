//! The fit: class-balanced, L2-penalised logistic regression on the pair
//! features, solved by Newton's method (iteratively reweighted least squares:
//! `D + 2` unknowns, 130 at 128 values a vector, one Cholesky solve per step,
//! the step halved until the loss does not increase). Sums are reduced over fixed chunks in order, so the
//! weights are bit-identical whatever the thread count.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Fit `σ(w·x + w_d·‖x‖² + b)` by Newton's method on the class-balanced,
/// L2-penalised log-loss, where `x` holds the |a_k − b_k| of a pair (so
/// `‖x‖²` is its squared distance); `x` is row-major, `dim` values a pair.
/// Returns (weights, distance weight, bias, Newton steps). Deterministic:
/// partial sums over fixed chunks, added in order.
#[allow(clippy::type_complexity)]
pub fn fit(x: &[f32], dim: usize, y: &[bool], l2: f64) -> Result<(Vec<f64>, f64, f64, usize)> {
    // Unknowns: a weight per |a_k − b_k|, the weight of ‖a − b‖², the bias.
    let p_len = dim + 2;
    let n = y.len();
    assert_eq!(x.len(), n * dim, "one feature row per label");
    let n_pos = y.iter().filter(|&&l| l).count();
    let n_neg = n - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::CannotTrain {
            reason: "training needs both genuine and impostor pairs".into(),
        });
    }
    let c_pos = n as f64 / (2.0 * n_pos as f64);
    let c_neg = n as f64 / (2.0 * n_neg as f64);
    let (dim_at, bias_at) = (dim, dim + 1);
    let mut theta = vec![0f64; p_len];
    let mut steps = 0;
    for _ in 0..50 {
        steps += 1;
        let parts: Vec<(Vec<f64>, Vec<f64>)> = x
            .par_chunks(2048 * dim)
            .zip(y.par_chunks(2048))
            .map(|(xc, yc)| {
                let mut g = vec![0f64; p_len];
                let mut h = vec![0f64; p_len * p_len];
                let mut xt = vec![0f64; p_len];
                for (xi, &yi) in xc.chunks_exact(dim).zip(yc) {
                    for k in 0..dim {
                        xt[k] = xi[k] as f64;
                    }
                    xt[dim_at] = xt[..dim].iter().map(|v| v * v).sum();
                    xt[bias_at] = 1.0;
                    let z: f64 = xt.iter().zip(&theta).map(|(a, b)| a * b).sum();
                    let p = 1.0 / (1.0 + (-z).exp());
                    let c = if yi { c_pos } else { c_neg };
                    let r = c * (p - if yi { 1.0 } else { 0.0 });
                    let s = c * p * (1.0 - p);
                    for j in 0..p_len {
                        g[j] += r * xt[j];
                        let v = s * xt[j];
                        let row = &mut h[j * p_len..j * p_len + p_len];
                        for k in j..p_len {
                            row[k] += v * xt[k];
                        }
                    }
                }
                (g, h)
            })
            .collect();
        let mut g = vec![0f64; p_len];
        let mut h = vec![0f64; p_len * p_len];
        for (pg, ph) in &parts {
            for (a, b) in g.iter_mut().zip(pg) {
                *a += b;
            }
            for (a, b) in h.iter_mut().zip(ph) {
                *a += b;
            }
        }
        for j in 0..=dim_at {
            g[j] += l2 * theta[j];
            h[j * p_len + j] += l2;
        }
        h[bias_at * p_len + bias_at] += 1e-9;
        for j in 0..p_len {
            for k in 0..j {
                h[j * p_len + k] = h[k * p_len + j];
            }
        }
        let delta = cholesky_solve(&mut h, &g, p_len).ok_or_else(|| Error::CannotTrain {
            reason: "training pairs are degenerate (singular Hessian)".into(),
        })?;
        // Damped Newton: halve the step until the penalised loss does not increase.
        let before = loss(x, dim, y, &theta, c_pos, c_neg, l2);
        let mut step = 1.0;
        let mut next = theta.clone();
        loop {
            for ((n, t), d) in next.iter_mut().zip(&theta).zip(&delta) {
                *n = t - step * d;
            }
            if loss(x, dim, y, &next, c_pos, c_neg, l2) <= before || step < 1e-6 {
                break;
            }
            step /= 2.0;
        }
        let max = delta.iter().map(|d| (d * step).abs()).fold(0.0, f64::max);
        theta = next;
        if max < 1e-7 {
            break;
        }
    }
    Ok((theta[..dim].to_vec(), theta[dim_at], theta[bias_at], steps))
}

/// The penalised, class-balanced log-loss at `theta` (summed in fixed chunks, in order).
fn loss(x: &[f32], dim: usize, y: &[bool], theta: &[f64], c_pos: f64, c_neg: f64, l2: f64) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(2048 * dim)
        .zip(y.par_chunks(2048))
        .map(|(xc, yc)| {
            let mut sum = 0f64;
            for (xi, &yi) in xc.chunks_exact(dim).zip(yc) {
                let mut z = theta[dim + 1];
                let mut d2 = 0f64;
                for k in 0..dim {
                    let v = xi[k] as f64;
                    z += theta[k] * v;
                    d2 += v * v;
                }
                z += theta[dim] * d2;
                // log(1 + e^z) − y·z, computed stably.
                let softplus = if z > 0.0 {
                    z + (-z).exp().ln_1p()
                } else {
                    z.exp().ln_1p()
                };
                sum += if yi {
                    c_pos * (softplus - z)
                } else {
                    c_neg * softplus
                };
            }
            sum
        })
        .collect();
    parts.iter().sum::<f64>() + 0.5 * l2 * theta[..=dim].iter().map(|t| t * t).sum::<f64>()
}

/// Solve `A x = b` for symmetric positive-definite `A` (row-major, P×P), in place.
#[allow(non_snake_case)]
fn cholesky_solve(a: &mut [f64], b: &[f64], P: usize) -> Option<Vec<f64>> {
    for j in 0..P {
        let mut d = a[j * P + j];
        for k in 0..j {
            d -= a[j * P + k] * a[j * P + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[j * P + j] = d;
        for i in j + 1..P {
            let mut s = a[i * P + j];
            for k in 0..j {
                s -= a[i * P + k] * a[j * P + k];
            }
            a[i * P + j] = s / d;
        }
    }
    let mut y = vec![0f64; P];
    for i in 0..P {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * P + k] * y[k];
        }
        y[i] = s / a[i * P + i];
    }
    let mut x = vec![0f64; P];
    for i in (0..P).rev() {
        let mut s = y[i];
        for k in i + 1..P {
            s -= a[k * P + i] * x[k];
        }
        x[i] = s / a[i * P + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn newton_recovers_a_known_logistic_model() {
        // Labels drawn from a known model; the fit must find it (large n, tiny penalty).
        let mut rng = Rng::new(11);
        const DIM: usize = 128;
        let mut true_w = [0f64; DIM];
        true_w[0] = -4.0;
        true_w[5] = 3.0;
        let b = 0.5;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..40_000 {
            let f: [f32; DIM] = std::array::from_fn(|_| rng.uniform() as f32);
            let z: f64 = f
                .iter()
                .zip(&true_w)
                .map(|(a, w)| *a as f64 * w)
                .sum::<f64>()
                + b;
            let p = 1.0 / (1.0 + (-z).exp());
            x.extend_from_slice(&f);
            y.push(rng.uniform() < p);
        }
        let (w, wd, _, steps) = fit(&x, DIM, &y, 1e-6).unwrap();
        assert!(wd.abs() < 0.3, "no distance term in the true model: {wd}");
        assert!((w[0] - -4.0).abs() < 0.3, "w0 {}", w[0]);
        assert!((w[5] - 3.0).abs() < 0.3, "w5 {}", w[5]);
        assert!(w[1].abs() < 0.3);
        assert!(steps < 20);
        // Deterministic.
        assert_eq!(fit(&x, DIM, &y, 1e-6).unwrap().0, w);
    }
}
