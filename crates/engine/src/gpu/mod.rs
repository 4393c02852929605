//! GPU backend (wgpu).
