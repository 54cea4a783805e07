# sluice: Windows DNS routing (NRPT) for alice/phone, tunnel "sluice".
# 1. Import this device's WireGuard config into the WireGuard app and activate
#    it: sluice peer config alice/phone --format conf
# 2. Run the lines below in an elevated PowerShell. Windows then sends
#    corp.example to the in-tunnel resolvers 10.20.0.53, fd20::53
#    only, never to another network adapter's resolver.
Add-DnsClientNrptRule -Namespace '.corp.example' -NameServers '10.20.0.53','fd20::53' -Comment 'sluice alice/phone'
# To remove these rules:
#   Get-DnsClientNrptRule | Where-Object { $_.Comment -eq 'sluice alice/phone' } | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }
