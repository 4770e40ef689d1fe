package guard

// LockWaitSQL13 is exported to the tests: they run PostgreSQL 15, where
// its form must read the same waits as LockWaitSQL's.
const LockWaitSQL13 = lockWaitSQL13
