//! The official initialisation, and results independent of the chunk size.

mod common;

use common::{device, rel, tokens, B};
use xlstm_blocks::block::XlstmLayer;
use xlstm_blocks::checkpoint::OfficialParams;
use xlstm_blocks::config::SlstmBiasInit;
use xlstm_blocks::{MlstmLayerConfig, SlstmLayerConfig, XlstmLmConfig};

fn values(t: burn::tensor::Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

#[test]
fn official_initialisation() {
    let config = XlstmLmConfig::new(9, 8, 3)
        .with_slstm_at(vec![0, 2])
        .with_mlstm(MlstmLayerConfig::new().with_num_heads(4))
        .with_slstm(SlstmLayerConfig::new().with_num_heads(2));
    let model = config.init::<B>(&device()).unwrap();
    let blocks = &model.xlstm_block_stack.blocks;
    let XlstmLayer::Mlstm(m) = &blocks[1].xlstm else {
        panic!("block 1 is mLSTM")
    };
    let f_bias = values(m.fgate.bias.as_ref().unwrap().val());
    assert_eq!(f_bias, vec![3.0, 4.0, 5.0, 6.0]); // linspace(3, 6, NH)
    assert_eq!(m.igate.weight.val().abs().max().into_scalar(), 0.0);
    assert!(values(m.learnable_skip.val()).iter().all(|v| *v == 1.0));
    // Norm weights are offsets: zero at init (scale 1).
    assert_eq!(
        values(blocks[1].xlstm_norm.weight.as_ref().unwrap().val()),
        vec![0.0; 8]
    );

    // sLSTM: power-law forget bias per head, block dependent; other gates zero; R zero.
    for (idx, expo) in [(0usize, 0.3f64), (2, 0.3 + 1.3)] {
        let XlstmLayer::Slstm(s) = &blocks[idx].xlstm else {
            panic!("sLSTM block")
        };
        let b = values(s.bias.val());
        let (h, dh) = (8, 4);
        for head in 0..2 {
            for u in 0..dh {
                let x = u as f64 / (dh - 1) as f64;
                let want = -(-5.0 + 12.0 * x.powf(expo));
                let got = b[h + head * dh + u] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "block {idx} head {head} unit {u}: {got} vs {want}"
                );
            }
        }
        assert!(b[..h].iter().chain(&b[2 * h..]).all(|v| *v == 0.0));
        assert_eq!(s.recurrent_kernel.val().abs().max().into_scalar(), 0.0);
    }

    let small = config
        .clone()
        .with_slstm(
            SlstmLayerConfig::new()
                .with_num_heads(2)
                .with_bias_init(SlstmBiasInit::SmallInit),
        )
        .init::<B>(&device())
        .unwrap();
    let XlstmLayer::Slstm(s) = &small.xlstm_block_stack.blocks[0].xlstm else {
        panic!()
    };
    assert_eq!(&values(s.bias.val())[8..12], &[3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn logits_do_not_depend_on_the_chunk_size() {
    let base = XlstmLmConfig::new(13, 16, 2).with_slstm_at(vec![1]);
    let long = base.clone().with_mlstm(
        MlstmLayerConfig::new()
            .with_num_heads(2)
            .with_chunk_size(64),
    );
    let short = base.with_mlstm(MlstmLayerConfig::new().with_num_heads(2).with_chunk_size(3));
    let a = long.init::<B>(&device()).unwrap();
    let mut weights = a.state_dict();
    let b = short
        .init::<B>(&device())
        .unwrap()
        .load_official("", &mut weights)
        .unwrap();
    let ids = tokens(2, 11, 13);
    let err = rel(b.logits(ids.clone()).unwrap(), a.logits(ids).unwrap());
    assert!(err < 2e-6, "rel {err:e}");
}
