//! wasmlet's OCI pieces, shared by the CLI and the containerd shim.
//!
//! Map of the crate:
//! - [`bundle`]: an OCI runtime bundle's `config.json` as the shim reads
//!   it: the module (`process.args[0]` inside the rootfs, with an optional
//!   `#export`), environment, mounts, `linux.resources` and
//!   `linux.cgroupsPath` (cgroupfs and systemd forms), and the annotations
//!   CRI sets (pod sandbox id, container type);
//! - [`image`]: writing an OCI image tarball (`oci-layout`, `index.json`,
//!   blobs) holding one module in a plain tar layer, which `ctr image
//!   import` accepts as is;
//! - `error`: [`Error`].

#![warn(missing_docs)]

pub mod bundle;
mod error;
pub mod image;

pub use error::Error;
