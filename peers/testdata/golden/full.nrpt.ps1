# sluice: Windows DNS routing (NRPT) for alice/phone, tunnel "sluice".
# 1. Import this device's WireGuard config into the WireGuard app and activate
#    it: sluice peer config alice/phone --format conf
# 2. Run this script in an elevated PowerShell. Windows then sends
#    every name to the in-tunnel resolvers 10.20.0.53, fd20::53
#    only, never to another network adapter's resolver.
# Running it again is safe: it first removes the rules it added before
# (those whose Comment is 'sluice alice/phone'), then adds them anew.
#
# The rule for "." (every name) applies on every network adapter, also while
# the tunnel is down. The in-tunnel resolvers are then unreachable, so no name
# resolves at all, not even a hotel or airport login page: this fails closed,
# nothing goes to the local network's resolver. Bring the tunnel up first; to
# resolve without the tunnel again, remove the rules (last lines below).
$sluiceComment = 'sluice alice/phone'
Get-DnsClientNrptRule | Where-Object { $_.Comment -eq $sluiceComment } | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }
Add-DnsClientNrptRule -Namespace '.' -NameServers '10.20.0.53','fd20::53' -Comment $sluiceComment -DisplayName $sluiceComment
# Search suffixes: a short name ("intranet") is tried as corp.example.
# They are added to the existing list, once, keeping its order.
$sluiceSuffixes = @('corp.example')
$current = @((Get-DnsClientGlobalSetting).SuffixSearchList | Where-Object { $_ })
Set-DnsClientGlobalSetting -SuffixSearchList @($current + $sluiceSuffixes | Select-Object -Unique)
# To remove these rules:
#   Get-DnsClientNrptRule | Where-Object { $_.Comment -eq 'sluice alice/phone' } | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }
#   Set-DnsClientGlobalSetting -SuffixSearchList @((Get-DnsClientGlobalSetting).SuffixSearchList | Where-Object { $_ -notin @('corp.example') })
