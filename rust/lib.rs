//! rconv: convolutional-network building blocks for the CPU.
//!
//! Convolution (1-, 2-, 3-D, with stride, padding, dilation and groups), pooling, ReLU, linear
//! layers and softmax cross-entropy over `ndarray` views of f32 or f64, computed in parallel on
//! rconv's own rayon pool (see [`parallel`]). Layouts are channels-first, as in PyTorch:
//! `(N, C, L)`, `(N, C, H, W)`, `(N, C, D, H, W)`; weights `(K, C / groups, *kernel)`.
//!
//! Every function validates its arguments first and returns [`Error`] for a bad one; none
//! panics on user input.

pub mod act;
#[cfg(any(test, feature = "python"))]
mod alloc;
pub mod conv;
mod element;
pub mod error;
mod fork;
pub mod linear;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod pool;
mod simd;
#[cfg(feature = "python")]
mod python;

/// The extension module's own allocations go through a cache of mid-sized blocks (see
/// `alloc`); Rust users of the crate keep whatever allocator their program has.
#[cfg(feature = "python")]
#[global_allocator]
static ALLOCATOR: alloc::CachingAllocator = alloc::CachingAllocator::new();

pub use act::{cross_entropy, cross_entropy_backward, log_softmax, relu, relu_backward, softmax};
pub use conv::{conv_backward, conv_backward_input, conv_backward_weight, conv_forward};
pub use element::Real;
pub use error::{Error, Result};
pub use linear::{linear_backward, linear_forward};
pub use optim::{adam_step, sgd_step, Adam, Sgd};
pub use parallel::{get_num_threads, set_num_threads};
pub use params::{ConvGeometry, ConvParams, Padding, PaddingMode, PoolGeometry, PoolParams};
pub use pool::{
    adaptive_avg_pool_backward, adaptive_avg_pool_forward, avg_pool_backward, avg_pool_forward, max_pool_backward,
    max_pool_backward_indices, max_pool_forward, max_pool_forward_values,
};
