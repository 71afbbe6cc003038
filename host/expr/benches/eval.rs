//! `cargo bench -p spade-expr`: prints the evaluator's timing figures.

fn main() {
    let iterations = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(2000);
    println!("{}", spade_expr::bench::run(iterations));
}
