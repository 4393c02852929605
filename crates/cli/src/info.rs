//! `jina-embed info`: what a model folder (or cached hub id) holds: config, tasks and their
//! prefixes, Matryoshka dimensions, dtype, parameter count, and each file's size and sha256
//! (checked against the cache's blob name where the Hugging Face cache stores one).

use std::path::Path;

use anyhow::Context;
use clap::Args;
use jina_engine::config::Config;
use jina_engine::hub::{self, Source, OPTIONAL_FILES};
use jina_engine::weights::Weights;
use serde_json::json;

#[derive(Args)]
pub struct InfoArgs {
    /// Model folder, or a Hugging Face hub id (owner/name[@revision]) in the local cache
    /// (downloaded there first if missing, unless --offline or HF_HUB_OFFLINE=1).
    #[arg(long, env = "JINA_MODEL", default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Skip the sha256 of each file (hashing the full model reads 1.1 GB).
    #[arg(long)]
    no_hash: bool,
    /// Show the kernels as capped to this instruction-set level (avx2, avx512, …).
    #[arg(long, value_name = "ISA", value_parser = crate::parse_isa)]
    max_isa: Option<jina_engine::Isa>,
    /// Where the encoder runs: `cpu`, `gpu` (a GPU through wgpu, Vulkan, Metal or DX12; a
    /// software adapter such as Mesa's lavapipe counts; needs a build with `--features gpu`)
    /// or `auto` (a hardware GPU when there is one, else the CPU).
    #[arg(long, env = "JINA_DEVICE", value_enum, default_value = "auto")]
    device: jina_engine::DeviceChoice,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let resolved = crate::resolve::resolve(&args.model)?;
    let dir = &resolved.dir;
    // Hashes first: a corrupt file is reported as such, not as whatever parsing it gives.
    let mut files = Vec::new();
    for name in hub::all_model_files() {
        let path = dir.join(name);
        if !path.exists() && OPTIONAL_FILES.contains(&name) {
            continue;
        }
        let size = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let sha256 = if args.no_hash {
            None
        } else {
            Some(hub::sha256_file(&path).with_context(|| format!("hashing {}", path.display()))?)
        };
        let expected = hub::expected_sha256(&path);
        if let (Some(got), Some(want)) = (&sha256, &expected) {
            if got != want {
                anyhow::bail!("{} is corrupt: its sha256 is {got} but the cache names it {want}; download it again", path.display());
            }
        }
        files.push(json!({
            "name": name,
            "bytes": size,
            "sha256": sha256,
            "verified_against_cache": sha256.is_some() && expected.is_some(),
        }));
    }
    let config = Config::from_file(&dir.join("config.json"))?;
    let weights = Weights::open(&dir.join("model.safetensors"), &config)?;
    let source = match &resolved.source {
        Source::Folder => json!({"kind": "folder"}),
        Source::Cache { id, commit } => {
            json!({"kind": "huggingface-cache", "repo": id.repo, "revision": id.revision(), "commit": commit})
        }
    };
    let tasks: Vec<_> = config
        .lora_adaptations
        .iter()
        .map(|t| json!({"task": t, "prefix": config.task_instructions.get(t).cloned().unwrap_or_default()}))
        .collect();
    // What each --precision runs on this CPU, as a model load would resolve it.
    let cpu = jina_engine::Cpu::host_checked()?;
    let cpu = args.max_isa.map_or(cpu, |isa| cpu.capped(isa));
    let bf16_weights = weights.linear_weights_are_bf16();
    let precisions: Vec<_> = [
        jina_engine::Precision::F32,
        jina_engine::Precision::Bf16,
        jina_engine::Precision::Int8,
        jina_engine::Precision::F16,
    ]
    .into_iter()
    .map(|p| {
        let plan = jina_engine::KernelPlan::resolve(p, cpu, bf16_weights);
        json!({
            "requested": p.name(),
            "runs": plan.precision().name(),
            "linear": plan.linear.to_string(),
            "attention": plan.attention.to_string(),
            "fallbacks": plan.fallbacks,
        })
    })
    .collect();
    let device = jina_engine::device::plan_device(args.device, jina_engine::Precision::F32)?;
    // On a GPU, what its fast path would run (f16 needs the adapter's shader-f16).
    let gpu_precisions: Vec<_> = if device.is_gpu() {
        [jina_engine::Precision::F32, jina_engine::Precision::F16]
            .into_iter()
            .map(|p| {
                let plan = jina_engine::device::plan_device(args.device, p)?;
                Ok(json!({
                    "requested": p.name(),
                    "runs": plan.precision.unwrap_or_default().name(),
                    "linear": plan.operations.iter().find(|(op, _)| *op == "linear").map(|(_, how)| how.clone()),
                    "fallbacks": plan.precision_fallbacks,
                }))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        Vec::new()
    };
    let device = json!({
        "kind": device.name(),
        "requested": device.requested.name(),
        "summary": device.summary(),
        "gpu": device.gpu.as_ref().map(|g| json!({
            "name": g.name,
            "backend": g.backend,
            "driver": g.driver,
            "kind": g.kind.name(),
            "max_storage_buffer_bytes": g.max_storage_buffer_bytes,
            "max_buffer_bytes": g.max_buffer_bytes,
            "shader_f16": g.shader_f16,
        })),
        "operations": device.operations.iter().map(|(op, how)| json!({"operation": op, "runs": how})).collect::<Vec<_>>(),
        "precisions": gpu_precisions,
        "fallbacks": device.fallbacks,
    });
    let info = json!({
        "folder": dir.display().to_string(),
        "source": source,
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "max_tokens": config.max_position_embeddings,
        "lora_rank": config.lora_rank,
        "tasks": tasks,
        "default_task": jina_engine::DEFAULT_TASK,
        "matryoshka_dimensions": config.matryoshka_dimensions,
        "dtype": weights.dtype().name(),
        "parameters": weights.parameter_count(),
        "files": files,
        "cpu": {"isa": cpu.level().name(), "features": cpu.feature_names()},
        "precisions": precisions,
        "device": device,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    print_text(&info, dir);
    Ok(())
}

fn print_text(info: &serde_json::Value, dir: &Path) {
    println!("model folder   {}", dir.display());
    if info["source"]["kind"] == "huggingface-cache" {
        println!(
            "from cache     {}@{} (commit {})",
            info["source"]["repo"].as_str().unwrap_or(""),
            info["source"]["revision"].as_str().unwrap_or(""),
            info["source"]["commit"].as_str().unwrap_or("")
        );
    }
    println!(
        "architecture   XLM-RoBERTa, {} layers, hidden {}, {} heads, MLP {}, vocab {}",
        info["layers"],
        info["hidden_size"],
        info["attention_heads"],
        info["intermediate_size"],
        info["vocab_size"]
    );
    println!("max tokens     {} (with <s> and </s>)", info["max_tokens"]);
    println!("dtype          {}", info["dtype"].as_str().unwrap_or(""));
    let params = info["parameters"].as_u64().unwrap_or(0);
    println!("parameters     {params} ({:.1} M)", params as f64 / 1e6);
    println!(
        "dimensions     any of 1..={}; trained (Matryoshka): {}",
        info["hidden_size"], info["matryoshka_dimensions"]
    );
    println!(
        "tasks          (LoRA rank {}; default {})",
        info["lora_rank"],
        info["default_task"].as_str().unwrap_or("")
    );
    for task in info["tasks"].as_array().into_iter().flatten() {
        let prefix = task["prefix"].as_str().unwrap_or("");
        let prefix = if prefix.is_empty() {
            "(no prefix)".to_string()
        } else {
            format!("prefix {prefix:?}")
        };
        println!("  {:<20} {prefix}", task["task"].as_str().unwrap_or(""));
    }
    println!(
        "cpu            {} ({})",
        info["cpu"]["isa"].as_str().unwrap_or(""),
        info["cpu"]["features"]
            .as_array()
            .map_or(String::new(), |f| f
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" "))
    );
    println!("precisions     (what --precision runs on this CPU)");
    for p in info["precisions"].as_array().into_iter().flatten() {
        let (requested, runs) = (
            p["requested"].as_str().unwrap_or(""),
            p["runs"].as_str().unwrap_or(""),
        );
        println!(
            "  {requested:<5} runs {runs:<5} linear {}; attention {}",
            p["linear"].as_str().unwrap_or(""),
            p["attention"].as_str().unwrap_or("")
        );
        for reason in p["fallbacks"].as_array().into_iter().flatten() {
            println!("        {}", reason.as_str().unwrap_or(""));
        }
    }
    println!(
        "device         {} (--device {})",
        info["device"]["summary"].as_str().unwrap_or(""),
        info["device"]["requested"].as_str().unwrap_or("")
    );
    for op in info["device"]["operations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  {:<12} {}",
            op["operation"].as_str().unwrap_or(""),
            op["runs"].as_str().unwrap_or("")
        );
    }
    for reason in info["device"]["fallbacks"].as_array().into_iter().flatten() {
        println!("        {}", reason.as_str().unwrap_or(""));
    }
    if let Some(precisions) = info["device"]["precisions"]
        .as_array()
        .filter(|p| !p.is_empty())
    {
        println!("  precisions   (what --precision runs on this GPU)");
        for p in precisions {
            println!(
                "    {:<5} runs {:<5} linear {}",
                p["requested"].as_str().unwrap_or(""),
                p["runs"].as_str().unwrap_or(""),
                p["linear"].as_str().unwrap_or("")
            );
            for reason in p["fallbacks"].as_array().into_iter().flatten() {
                println!("          {}", reason.as_str().unwrap_or(""));
            }
        }
    }
    println!("files");
    for file in info["files"].as_array().into_iter().flatten() {
        let sha = file["sha256"].as_str().unwrap_or("(not hashed: --no-hash)");
        let check = if file["verified_against_cache"] == true {
            " (matches the cache)"
        } else {
            ""
        };
        println!(
            "  {:<18} {:>14} bytes  sha256 {sha}{check}",
            file["name"].as_str().unwrap_or(""),
            file["bytes"]
        );
    }
}
