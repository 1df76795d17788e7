//! Compiles the project's C++ (csrc/: autograd functions, Winograd convolutions, mean-only batch norm with leaky ReLU, the upsampling resampling, max-pool kernels and the first layer's fused ones, the profiler hook) against the libtorch that
//! tch links, found the way torch-sys finds it (`LIBTORCH`, set in .cargo/config.toml), and gives the binaries their rpath.
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
    let build = || {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .pic(true)
            .std("c++17")
            .include(libtorch.join("include"))
            .include(libtorch.join("include/torch/csrc/api/include"))
            .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
            .define("GLOG_USE_GLOG_EXPORT", None)
            // libtorch's headers warn under -Wall; ours are checked by the tests.
            .warnings(false)
            // ATen's parallel_for is a header template: without OpenMP it runs every kernel of
            // ours on one thread. Linked against libgomp.so.1, which the loader resolves to
            // libtorch's own copy (the rpath's lib/ comes first), so both share one thread pool
            // and its thread count.
            .flag("-fopenmp")
            // No code of ours enables floating-point traps; with them assumed (GCC's default), a
            // select with a product in one arm (leaky ReLU's) keeps its loop scalar.
            .flag("-fno-trapping-math");
        build
    };
    build()
        .file("csrc/bn_leaky_relu.cpp")
        .file("csrc/custom.cpp")
        .file("csrc/maxpool.cpp")
        .file("csrc/momentum.cpp")
        .file("csrc/pointwise_pool.cpp")
        .file("csrc/profile.cpp")
        .file("csrc/upsample.cpp")
        .file("csrc/winograd.cpp")
        .compile("gtn_custom");
    // The first layer's fused kernels and the Winograd transforms' tile kernels once per
    // instruction set level, each in its own namespace (csrc/pointwise_kernels.h); the library
    // picks one at run time.
    let levels: &[(&str, &[&str])] = if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        &[("baseline", &[]), ("avx2", &["-march=x86-64-v3"]), ("avx512", &["-march=x86-64-v4"])]
    } else {
        &[("baseline", &[])]
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (level, flags) in levels {
        let mut kernels = build();
        // -Wno-psabi: GCC notes, once per build, that passing 512-bit vectors changed ABI in GCC 4.6
        // (the kernels pass them only between functions of their own build).
        kernels
            .file("csrc/pointwise_kernels.cpp")
            .define("GTN_ISA", *level)
            .flag_if_supported("-Wno-psabi")
            .out_dir(out.join(level));
        for flag in *flags {
            kernels.flag(flag);
        }
        kernels.compile(&format!("gtn_pointwise_{level}"));
    }
    // The rpath (a RUNPATH: LD_LIBRARY_PATH still goes first, as on the GPU machine):
    // target/release/gtn and the test binaries (target/release/deps/) find this folder's libtorch,
    // and the libgomp in its lib/, without LD_LIBRARY_PATH. Here rather than as rustflags in .cargo/config.toml, which a RUSTFLAGS
    // variable replaces; the absolute path serves a target folder elsewhere (CARGO_TARGET_DIR).
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../../.libtorch/torch/lib:$ORIGIN/../../../.libtorch/torch/lib:{}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
    println!("cargo:rustc-link-lib=gomp");
}
