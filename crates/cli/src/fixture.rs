//! `jina-embed fixture`: writes a formula checkpoint (shared/fixtures/README.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use jina_engine::fixture::{write_fixture, FixtureShape};

#[derive(Clone, Copy, ValueEnum)]
pub enum Variant {
    /// hidden 128, 2 heads, 2 layers, MLP 256 (the golden fixtures).
    Small,
    /// The real model's shape: hidden 1024, 16 heads, 24 layers, MLP 4096 (1.1 GB).
    Full,
}

#[derive(Args)]
pub struct FixtureArgs {
    /// Folder to write config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
    /// special_tokens_map.json into.
    #[arg(long)]
    out: PathBuf,
    /// Preset shape.
    #[arg(long, value_enum, default_value = "small")]
    variant: Variant,
    /// Seed of the value formula.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Override the hidden size.
    #[arg(long)]
    hidden_size: Option<usize>,
    /// Override the number of attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Override the number of layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Override the MLP width.
    #[arg(long)]
    intermediate_size: Option<usize>,
}

pub fn run(args: FixtureArgs) -> anyhow::Result<()> {
    let mut shape = match args.variant {
        Variant::Small => FixtureShape::SMALL,
        Variant::Full => FixtureShape::FULL,
    };
    shape.hidden_size = args.hidden_size.unwrap_or(shape.hidden_size);
    shape.num_attention_heads = args.heads.unwrap_or(shape.num_attention_heads);
    shape.num_hidden_layers = args.layers.unwrap_or(shape.num_hidden_layers);
    shape.intermediate_size = args.intermediate_size.unwrap_or(shape.intermediate_size);
    write_fixture(&args.out, shape, args.seed)
        .with_context(|| format!("writing the fixture into {}", args.out.display()))?;
    eprintln!(
        "wrote {} (hidden {}, {} heads, {} layers, MLP {}, seed {})",
        args.out.display(),
        shape.hidden_size,
        shape.num_attention_heads,
        shape.num_hidden_layers,
        shape.intermediate_size,
        args.seed
    );
    Ok(())
}
