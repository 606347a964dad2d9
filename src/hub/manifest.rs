//! `tether hub`: the hub's own manifest (written next).
