fn main() { stratus::main() }
