//! Compiles the project's C++ (csrc/: autograd functions, Winograd convolutions, the upsampling resampling, max-pool kernels, the profiler hook) against the libtorch that
//! tch links, found the way torch-sys finds it (`LIBTORCH`, set in .cargo/config.toml).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let libtorch = PathBuf::from(
        std::env::var("LIBTORCH")
            .expect("LIBTORCH is not set: .cargo/config.toml points it at .libtorch/torch (run scripts/setup.sh)"),
    );
    // torch-sys's default; the torch 2.11 wheels are built with the C++11 ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        // libtorch's headers warn under -Wall; ours are checked by the tests.
        .warnings(false)
        // ATen's parallel_for is a header template: without OpenMP it runs every kernel of ours on
        // one thread. Linked against libgomp.so.1, which the loader resolves to libtorch's own copy
        // (the rpath's lib/ comes first), so both share one thread pool and its thread count.
        .flag("-fopenmp")
        .file("csrc/custom.cpp")
        .file("csrc/maxpool.cpp")
        .file("csrc/profile.cpp")
        .file("csrc/upsample.cpp")
        .file("csrc/winograd.cpp")
        .compile("gtn_custom");
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
    println!("cargo:rustc-link-lib=gomp");
}
