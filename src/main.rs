//! The `ferry` binary: everything lives in the library; see `ferry --help`.

fn main() {
    std::process::exit(ferry::cli::run());
}
