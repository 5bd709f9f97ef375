//! Building blocks shared by the layers: every parameter is stored in the layout of the
//! official PyTorch `state_dict`, so checkpoints and gradients map one to one.

mod conv;
mod ffn;
mod headwise;
pub mod init;
mod linear;
mod norm;

pub use conv::CausalConv1d;
pub use ffn::{gelu, FeedForwardActivation, GatedFeedForward, SwiGlu};
pub use headwise::LinearHeadwise;
pub use linear::Linear;
pub use norm::{LayerNorm, MultiHeadLayerNorm, NormWeight, RmsNorm};
