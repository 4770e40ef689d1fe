package stream

// SetRetireAfterLock makes Retire call f inside its switch transaction, with
// blue locked and the switch position read, before the stream applies up
// to it (TestRetireHoldsWritersUntilDrained).
func SetRetireAfterLock(o *RetireOptions, f func()) { o.afterLock = f }
