fn main() {
    std::process::exit(appstrate::cli::main());
}
