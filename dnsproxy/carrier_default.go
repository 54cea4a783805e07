//go:build !linux

package dnsproxy

// carriers is empty where the miss path (Linux) is not built.
type carriers struct{}

func (u *upstream) closeCarriers() {}

// missFlight is a miss the Linux listener started; none elsewhere.
type missFlight struct{}

func (p *Proxy) finishMiss(*missFlight) {}

// carrierPoller is the Linux miss path's (carrier_poll_linux.go).
type carrierPoller struct{}

func (*carrierPoller) init(*Proxy) {}
func (*carrierPoller) stop()       {}
