#!/usr/bin/env bash
# Fails when a numeric test did not run on every instruction-set variant this CPU has.
#
# The variant-driven tests append "TEST VARIANT" lines to $JINA_VARIANT_LOG (the engine's
# `kernels::cpu::record_variant`). The variants this CPU has are read here from /proc/cpuinfo,
# independently of the engine's own detection, so a detection bug that hides a variant fails too.
#   usage: scripts/check-variants.sh LOG
set -euo pipefail
log=${1:?usage: check-variants.sh LOG}
[ -s "$log" ] || { echo "check-variants: $log is missing or empty: no variant-driven test ran" >&2; exit 1; }
flags=" $(grep -m1 -E '^(flags|Features)' /proc/cpuinfo | cut -d: -f2) "
has() { for f in "$@"; do case "$flags" in *" $f "*) ;; *) return 1 ;; esac; done; }
expected="scalar"
case "$(uname -m)" in
    x86_64)
        if has avx2 fma; then expected+=" avx2"
            # 256-bit vpdpbusd: AVX-VNNI (VEX), or AVX512_VNNI with VL (EVEX) under the cap.
            if has avx_vnni || has avx512_vnni avx512vl; then expected+=" avxvnni"; fi
            if has avx512f avx512bw avx512vl avx512dq; then expected+=" avx512"
                if has avx512_bf16; then expected+=" avx512bf16"
                    if has amx_bf16 amx_tile; then expected+=" amx"; fi
                fi
            fi
        fi ;;
    aarch64)
        if has asimd; then expected+=" neon"
            if has asimddp; then expected+=" dotprod"
                if has i8mm; then expected+=" i8mm"; fi
                if has bf16; then expected+=" bf16"; fi
            fi
        fi ;;
esac
# The tests whose every variant must run: golden outputs, batch invariance, mixed tasks, kernel
# parity (linear and attention) against the references, custom adapters against the built-in,
# training gradients against PyTorch autograd.
required=(
    golden::every_golden_case_matches_the_official_outputs
    golden::bf16_path_keeps_cosine_above_0_999
    golden::int8_path_keeps_cosine_above_0_999
    batching::batch_composition_does_not_change_results
    batching::mixed_task_batch_equals_single_task_runs
    batching::a_short_input_batched_with_a_long_one_is_unchanged
    linear::kernels_match_the_reference_kernel
    linear::products_match_an_f64_product_on_awkward_shapes
    linear::int8_kernels_give_the_quantised_products_bits
    reference::tiled_attention_matches_reference
    adapters::custom_copy_f32
    adapters::custom_copy_bf16
    adapters::custom_copy_int8
    adapters::mixed_batch
    training::gradients_match_pytorch_autograd
)
missing=0
for test in "${required[@]}"; do
    ran=$(awk -v t="$test" '$1 == t { print $2 }' "$log" | sort -u | tr '\n' ' ')
    for variant in $expected; do
        case " $ran " in
            *" $variant "*) ;;
            *) echo "check-variants: $test did not run on $variant (ran on: ${ran:-nothing})" >&2; missing=1 ;;
        esac
    done
done
[ "$missing" = 0 ] || exit 1
echo "check-variants: this CPU's variants ($expected) each ran ${#required[@]} numeric tests ($(wc -l < "$log") test runs in all)"
