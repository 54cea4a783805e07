# sluice: Windows DNS routing (NRPT) for alice/phone, tunnel "sluice".
# 1. Import this device's WireGuard config into the WireGuard app and activate
#    it: sluice peer config alice/phone --format conf
# 2. Run this script in an elevated PowerShell. Windows then sends
#    corp.example to the in-tunnel resolvers 10.20.0.53, fd20::53
#    only, never to another network adapter's resolver.
# Running it again is safe: it first removes the rules it added before
# (those whose Comment is 'sluice alice/phone'), then adds them anew.
$sluiceComment = 'sluice alice/phone'
Get-DnsClientNrptRule | Where-Object { $_.Comment -eq $sluiceComment } | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }
Add-DnsClientNrptRule -Namespace '.corp.example' -NameServers '10.20.0.53','fd20::53' -Comment $sluiceComment -DisplayName $sluiceComment
# Search suffixes: a short name ("intranet") is tried as corp.example.
# They are added to the existing list, once, keeping its order.
$sluiceSuffixes = @('corp.example')
$current = @((Get-DnsClientGlobalSetting).SuffixSearchList | Where-Object { $_ })
Set-DnsClientGlobalSetting -SuffixSearchList @($current + $sluiceSuffixes | Select-Object -Unique)
# 3. Encrypted DNS (Windows 11 / Server 2022 and later): queries to the
#    in-tunnel resolvers go over DoH (https://dns.corp.example/dns-query), never in clear text.
#    First trust the gateway's own DNS CA (it can only vouch for dns.corp.example):
$sluiceCA = Join-Path $env:TEMP 'sluice-dns-ca.cer'
Set-Content -Path $sluiceCA -Encoding ascii -Value @'
-----BEGIN CERTIFICATE-----
MIIBCnRlc3QtY2EtZGVy
-----END CERTIFICATE-----
'@
Import-Certificate -FilePath $sluiceCA -CertStoreLocation Cert:\LocalMachine\Root | Out-Null
# Re-running is safe: an earlier registration of these addresses is replaced.
Remove-DnsClientDohServerAddress -ServerAddress '10.20.0.53' -ErrorAction SilentlyContinue
Add-DnsClientDohServerAddress -ServerAddress '10.20.0.53' -DohTemplate 'https://dns.corp.example/dns-query' -AllowFallbackToUdp $False -AutoUpgrade $True
Remove-DnsClientDohServerAddress -ServerAddress 'fd20::53' -ErrorAction SilentlyContinue
Add-DnsClientDohServerAddress -ServerAddress 'fd20::53' -DohTemplate 'https://dns.corp.example/dns-query' -AllowFallbackToUdp $False -AutoUpgrade $True
# To remove the DoH registration:
#   Remove-DnsClientDohServerAddress -ServerAddress '10.20.0.53'; Remove-DnsClientDohServerAddress -ServerAddress 'fd20::53'
# To remove these rules:
#   Get-DnsClientNrptRule | Where-Object { $_.Comment -eq 'sluice alice/phone' } | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }
#   Set-DnsClientGlobalSetting -SuffixSearchList @((Get-DnsClientGlobalSetting).SuffixSearchList | Where-Object { $_ -notin @('corp.example') })
