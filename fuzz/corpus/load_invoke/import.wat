(module (import "env" "f" (func)) (func (export "g") call 0))
