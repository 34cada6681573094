//! `hangar-worker`: the fleet daemon. The JetStream backend that feeds it is not built yet;
//! until then the binary only reports what it is and refuses to pretend to run.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "version") {
        println!("hangar-worker {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    eprintln!(
        "hangar-worker {}: the fleet backend (NATS JetStream) is not available in this build; \
         run jobs embedded with `hangar-coord mirror`",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
