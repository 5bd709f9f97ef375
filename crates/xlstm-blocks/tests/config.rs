//! Configurations: JSON round trip, derived dimensions, validation naming the field.

use xlstm_blocks::large::XlstmLargeConfig;
use xlstm_blocks::{MlstmLayerConfig, SlstmLayerConfig, XlstmLmConfig};

#[test]
fn json_round_trip_and_official_dimensions() {
    let c = XlstmLmConfig::new(50, 48, 8).with_slstm_at(vec![3]);
    let json = serde_json::to_string(&c).unwrap();
    let back: XlstmLmConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(c, back);
    // Official rounding: ceil(factor · E / 64) · 64.
    assert_eq!(c.mlstm_inner_dim(), 128);
    assert_eq!(c.ffn_up_dim(), 64);
    assert_eq!(XlstmLmConfig::new(5, 16, 1).mlstm_inner_dim(), 64);
    let large = XlstmLargeConfig::new(64, 4, 2, 50);
    assert_eq!(
        (large.qk_dim(), large.v_dim(), large.ffn_dim()),
        (32, 64, 192)
    );
    // The released 7B: E 4096, 2.6667 · 4096 rounded up to 64.
    assert_eq!(XlstmLargeConfig::new(4096, 8, 32, 50304).ffn_dim(), 10944);
}

#[test]
fn validation_names_the_field() {
    let field = |c: XlstmLmConfig| c.validate().unwrap_err().field;
    assert_eq!(
        field(XlstmLmConfig::new(5, 16, 2).with_slstm_at(vec![2])),
        "slstm_at"
    );
    assert_eq!(
        field(XlstmLmConfig::new(5, 16, 2).with_mlstm(MlstmLayerConfig::new().with_num_heads(5))),
        "mlstm.num_heads"
    );
    assert_eq!(
        field(
            XlstmLmConfig::new(5, 16, 2)
                .with_slstm_at(vec![0])
                .with_slstm(SlstmLayerConfig::new().with_num_heads(3))
        ),
        "slstm.num_heads"
    );
    assert_eq!(field(XlstmLmConfig::new(0, 16, 2)), "vocab_size");
    assert!(XlstmLmConfig::new(5, 16, 2).validate().is_ok());
    let large = XlstmLargeConfig::new(30, 4, 1, 5);
    assert_eq!(large.validate().unwrap_err().field, "qk_dim_factor");
}
