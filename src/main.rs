//! The `keyward` command: see `keyward --help`.

/// mimalloc instead of glibc's malloc: under ES256 load malloc and free were about 5% of
/// the worker threads' time; with mimalloc the server spends about 10% less CPU per token
/// (bench/run.sh). Transparent huge pages stay off (`no_thp`), else idle RSS doubles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keyward::cli::main()
}
