"""The lab: emulated censors and real-enough servers, so wallwatch is testable offline."""
