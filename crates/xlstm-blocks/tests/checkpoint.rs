//! Official-name checkpoints: round trips (single file and sharded), tied heads, and clear
//! errors for missing, misshaped and corrupt tensors.

mod common;

use std::path::PathBuf;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use common::{device, rel, tokens, B};
use xlstm_blocks::checkpoint::{
    load_official, safetensors::read_checkpoint, save_official, save_official_sharded,
    CheckpointError, OfficialParams, TensorMap,
};
use xlstm_blocks::large::{WeightMode, XlstmLargeConfig};
use xlstm_blocks::{MlstmLayerConfig, SlstmLayerConfig, XlstmLmConfig};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlstm-blocks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn lm_config(tie: bool) -> XlstmLmConfig {
    XlstmLmConfig::new(17, 16, 3)
        .with_slstm_at(vec![1])
        .with_tie_weights(tie)
        .with_mlstm(MlstmLayerConfig::new().with_num_heads(2))
        .with_slstm(SlstmLayerConfig::new().with_num_heads(2))
}

fn assert_same(a: &TensorMap, b: &TensorMap) {
    let names_a: Vec<_> = a.names().collect();
    let names_b: Vec<_> = b.names().collect();
    assert_eq!(names_a, names_b);
    for (name, data) in a.iter() {
        assert_eq!(Some(data), b.get(name), "tensor {name} differs");
    }
}

#[test]
fn lm_round_trip_is_identical_and_reproduces_the_logits() {
    for tie in [false, true] {
        let dir = tmp(&format!("lm-{tie}"));
        let a = lm_config(tie).init::<B>(&device()).unwrap();
        let path = dir.join("model.safetensors");
        save_official(&a, &path).unwrap();
        let file = read_checkpoint(&path).unwrap();
        assert!(file.get("lm_head.weight").is_some(), "tie {tie}");
        // A freshly initialised model differs; after loading it is identical.
        let b = load_official(lm_config(tie).init::<B>(&device()).unwrap(), &path).unwrap();
        assert_same(&a.state_dict(), &b.state_dict());
        let path2 = dir.join("again.safetensors");
        save_official(&b, &path2).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&path2).unwrap()
        );
        let ids = tokens(2, 5, 17);
        assert_eq!(
            rel(a.logits(ids.clone()).unwrap(), b.logits(ids).unwrap()),
            0.0
        );
    }
}

#[test]
fn large_sharded_round_trip() {
    for mode in [WeightMode::Single, WeightMode::Fused] {
        let config = XlstmLargeConfig::new(32, 2, 2, 19).with_weight_mode(mode);
        let a = config.init::<B>(&device()).unwrap();
        let dir = tmp(&format!("large-{mode:?}"));
        save_official_sharded(&a, &dir, 20_000).unwrap();
        let shards = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "safetensors")
            .count();
        assert!(shards > 2, "{shards} shards");
        let b = load_official(config.init::<B>(&device()).unwrap(), &dir).unwrap();
        assert_same(&a.state_dict(), &b.state_dict());
        let names: Vec<String> = a.state_dict().names().cloned().collect();
        let fused = names.iter().any(|n| n.ends_with("qkv_opreact.weight"));
        assert_eq!(fused, mode == WeightMode::Fused);
    }
}

#[test]
fn errors_name_the_tensor() {
    let model = || lm_config(false).init::<B>(&device()).unwrap();
    let full = model().state_dict();
    let name = "xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_";

    let mut missing = full.clone();
    missing.remove(name);
    let err = model().load_official("", &mut missing).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Missing(n) if n == name),
        "{err}"
    );

    let mut misshaped = full.clone();
    misshaped.insert(name, burn::tensor::TensorData::new(vec![0f32; 6], [2, 3]));
    let err = model().load_official("", &mut misshaped).unwrap_err();
    assert!(
        err.to_string().contains(name) && err.to_string().contains("[2, 3]"),
        "{err}"
    );

    let mut extra = full.clone();
    extra.insert(
        "no.such.weight",
        burn::tensor::TensorData::new(vec![0f32], [1]),
    );
    let model_loaded = model().load_official("", &mut extra).unwrap();
    let err = extra.finish().unwrap_err();
    assert!(err.to_string().contains("no.such.weight"), "{err}");
    drop(model_loaded);

    let dir = tmp("corrupt");
    let path = dir.join("model.safetensors");
    save_official(&model(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_official(model(), &path).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn burn_record_round_trip() {
    let dir = tmp("record");
    let a = lm_config(false).init::<B>(&device()).unwrap();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    a.clone().save_file(dir.join("model"), &recorder).unwrap();
    let b = lm_config(false)
        .init::<B>(&device())
        .unwrap()
        .load_file(dir.join("model"), &recorder, &device())
        .unwrap();
    assert_same(&a.state_dict(), &b.state_dict());
}
