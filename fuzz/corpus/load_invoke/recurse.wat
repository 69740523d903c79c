(module (func $r (export "r") (call $r)))
