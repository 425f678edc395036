//! Offline validation of every WGSL shader with naga (no GPU needed), and a check that no
//! shader file on disk escapes that validation.

use std::collections::BTreeSet;
use std::path::Path;

use modelbatch::ops::ALL_SHADERS;
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Parses and validates one WGSL source, returning naga's rendered diagnostic on failure.
fn validate(name: &str, source: &str) -> Result<naga::Module, String> {
    let path = format!("shaders/{name}.wgsl");
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string_with_path(source, &path))?;
    Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .map_err(|e| e.emit_to_string_with_path(source, &path))?;
    Ok(module)
}

#[test]
fn every_shader_parses_and_validates() {
    assert!(!ALL_SHADERS.is_empty(), "ALL_SHADERS is empty");
    let mut failures = Vec::new();
    for shader in ALL_SHADERS {
        match validate(shader.name, shader.source) {
            Ok(module) => {
                assert!(
                    module.entry_points.iter().any(|e| e.stage == naga::ShaderStage::Compute),
                    "shaders/{}.wgsl has no compute entry point",
                    shader.name
                );
            }
            Err(e) => failures.push(format!("shaders/{}.wgsl:\n{e}", shader.name)),
        }
    }
    assert!(failures.is_empty(), "{} shader(s) failed naga validation:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_generated_shader_parses_and_validates() {
    let generated = modelbatch::ops::generated_shaders();
    assert!(generated.len() >= 2, "{} generated shaders", generated.len());
    for (name, source) in generated {
        let module = validate(&name, &source).unwrap_or_else(|e| panic!("generated `{name}`:\n{e}\n{source}"));
        assert!(module.entry_points.iter().any(|e| e.stage == naga::ShaderStage::Compute), "{name}");
    }
}

#[test]
fn validator_rejects_a_broken_shader() {
    // The harness above must be able to fail: an out-of-type store is a validation error and
    // a missing brace a parse error.
    let bad_type = "@group(0) @binding(0) var<storage, read_write> o: array<f32>;\n\
                    @compute @workgroup_size(1) fn main() { o[0] = 1u; }";
    assert!(validate("bad_type", bad_type).is_err(), "naga accepted a u32 stored into an f32 array");
    let bad_syntax = "@compute @workgroup_size(1) fn main() {";
    assert!(validate("bad_syntax", bad_syntax).is_err(), "naga accepted an unclosed function");
}

#[test]
fn every_shader_file_is_listed_in_all_shaders() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        assert!(
            ALL_SHADERS.iter().any(|s| s.name == stem),
            "{} is not listed in modelbatch::ops::ALL_SHADERS, so it is never validated",
            path.display()
        );
        on_disk.insert(stem);
    }
    assert!(!on_disk.is_empty(), "no .wgsl files found in {}", dir.display());
    let listed: Vec<&str> = ALL_SHADERS.iter().map(|s| s.name).collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(unique.len(), listed.len(), "ALL_SHADERS lists a shader twice: {listed:?}");
    for name in &listed {
        assert!(on_disk.contains(*name), "ALL_SHADERS lists {name:?} but shaders/{name}.wgsl does not exist");
    }
}
