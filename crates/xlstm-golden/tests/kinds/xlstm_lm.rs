//! `xlstm_lm`: the NeurIPS xLSTM LM built from the case's config, loaded from its `param.*`
//! tensors; logits, step-by-step logits, loss and the gradient of every parameter.

use burn::tensor::{Int, Tensor, TensorData};
use xlstm_blocks::checkpoint::{OfficialParams, ParamTensor, TensorMap};
use xlstm_blocks::components::FeedForwardActivation;
use xlstm_blocks::lm::masked_cross_entropy;
use xlstm_blocks::{FeedForwardConfig, MlstmLayerConfig, SlstmLayerConfig, XlstmLmConfig};
use xlstm_golden::{Array, Case, TestAutodiffBackend as B};

use super::{Report, GRAD_BOUND, OUTPUT_BOUND};

type Inner = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;

/// The model configuration the case's JSON describes.
pub fn config(case: &Case) -> XlstmLmConfig {
    let c = &case.meta["config"];
    let o = &case.meta["official_config"];
    let num = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .unwrap_or_else(|| panic!("{}: no number at {what}", case.name))
    };
    let blocks = case.meta_usize(&["config", "blocks"]);
    let heads = case.meta_usize(&["config", "heads"]);
    let slstm_at: Vec<usize> = match &c["slstm_at"] {
        serde_json::Value::String(s) if s == "all" => (0..blocks).collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| v.as_u64().expect("index") as usize)
            .collect(),
        other => panic!("{}: slstm_at {other}", case.name),
    };
    let act_fn = match o["feedforward"]["act_fn"].as_str() {
        Some("gelu") | None => FeedForwardActivation::Gelu,
        Some("swish") => FeedForwardActivation::Swish,
        Some("relu") => FeedForwardActivation::Relu,
        Some(other) => panic!("{}: activation {other}", case.name),
    };
    XlstmLmConfig::new(
        case.meta_usize(&["config", "vocab"]),
        case.meta_usize(&["config", "E"]),
        blocks,
    )
    .with_slstm_at(slstm_at)
    .with_tie_weights(c["tie"].as_bool().unwrap_or(false))
    .with_add_post_blocks_norm(o["add_post_blocks_norm"].as_bool().unwrap_or(true))
    .with_bias(o["bias"].as_bool().unwrap_or(false))
    .with_mlstm(
        MlstmLayerConfig::new()
            .with_num_heads(heads)
            .with_conv1d_kernel_size(num(
                &o["mlstm"]["conv1d_kernel_size"],
                "mlstm.conv1d_kernel_size",
            ) as usize)
            .with_qkv_proj_blocksize(num(
                &o["mlstm"]["qkv_proj_blocksize"],
                "mlstm.qkv_proj_blocksize",
            ) as usize)
            .with_proj_factor(num(&o["mlstm"]["proj_factor"], "mlstm.proj_factor")),
    )
    .with_slstm(
        SlstmLayerConfig::new()
            .with_num_heads(heads)
            .with_conv1d_kernel_size(num(
                &o["slstm"]["conv1d_kernel_size"],
                "slstm.conv1d_kernel_size",
            ) as usize),
    )
    .with_feedforward(
        FeedForwardConfig::new()
            .with_proj_factor(num(
                &o["feedforward"]["proj_factor"],
                "feedforward.proj_factor",
            ))
            .with_act_fn(act_fn),
    )
}

/// The case's `param.*` tensors under their official names.
pub fn params(case: &Case) -> TensorMap {
    let mut map = TensorMap::new();
    for name in case.names("param.") {
        let a = case.get(&format!("param.{name}"));
        let values: Vec<f32> = a.values.iter().map(|v| *v as f32).collect();
        map.insert(name, TensorData::new(values, a.shape.clone()));
    }
    map
}

pub fn ids(case: &Case, name: &str) -> Tensor<B, 2, Int> {
    let a = case.get(name);
    Tensor::from_data(
        TensorData::new(a.to_ints(), a.shape.clone()),
        &Default::default(),
    )
}

/// Compares `grad.<name>` for every golden gradient with the gradient of our parameter.
pub fn compare_grads(
    case: &Case,
    report: &mut Report,
    visited: Vec<(String, ParamTensor<B>)>,
    grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients,
    bound: impl Fn(&str) -> f64,
) {
    for name in case.names("grad.") {
        let key = format!("grad.{name}");
        let Some((_, p)) = visited.iter().find(|(n, _)| *n == name) else {
            report.missing(&case.name, &key);
            continue;
        };
        let got: Option<Array> = match p {
            ParamTensor::R1(t) => t.grad(grads).map(Array::from_tensor::<Inner, 1>),
            ParamTensor::R2(t) => t.grad(grads).map(Array::from_tensor::<Inner, 2>),
            ParamTensor::R3(t) => t.grad(grads).map(Array::from_tensor::<Inner, 3>),
            ParamTensor::R2Swapped(t) => t
                .grad(grads)
                .map(|g| Array::from_tensor::<Inner, 2>(g.swap_dims(0, 1))),
            ParamTensor::R3Swapped(t) => t
                .grad(grads)
                .map(|g| Array::from_tensor::<Inner, 3>(g.swap_dims(1, 2))),
        };
        match got {
            Some(got) => report.compare(&case.name, &key, &got, case.get(&key), bound(&name)),
            None => report.missing(&case.name, &key),
        }
    }
}

pub fn check(case: &Case, report: &mut Report) {
    let device = Default::default();
    let mut map = params(case);
    let model = config(case)
        .init::<B>(&device)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
        .load_official("", &mut map)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    map.finish()
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));

    let idx = ids(case, "input.idx");
    let [b, s] = idx.dims();
    let logits = model.logits(idx.clone()).unwrap();
    report.compare(
        &case.name,
        "output.logits",
        &Array::from_tensor(logits.clone()),
        case.get("output.logits"),
        OUTPUT_BOUND,
    );
    let loss = masked_cross_entropy(logits, ids(case, "input.targets"), None);
    report.compare(
        &case.name,
        "output.loss",
        &Array::from_tensor(loss.clone()),
        case.get("output.loss"),
        OUTPUT_BOUND,
    );
    let grads = loss.backward();
    let mut visited = vec![];
    model.visit_official("", &mut visited);
    compare_grads(case, report, visited, &grads, |_| GRAD_BOUND);

    let mut state = None;
    let mut steps = vec![];
    for t in 0..s {
        let tok = idx.clone().narrow(1, t, 1).reshape([b]);
        let (l, next) = model.step(tok, state).unwrap();
        steps.push(l.detach());
        state = Some(next.detach());
    }
    report.compare(
        &case.name,
        "output.step_logits",
        &Array::from_tensor(Tensor::stack::<3>(steps, 1)),
        case.get("output.step_logits"),
        OUTPUT_BOUND,
    );
}
